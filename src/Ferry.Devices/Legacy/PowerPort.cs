using System.Buffers.Binary;

namespace Ferry.Devices.Legacy;

/// <summary>
/// Port 0xF4: the guest writes 0 to power off, or a non-zero code when it panics. Same port as QEMU's
/// isa-debug-exit device, so the same guest image can stop QEMU.
/// </summary>
public sealed class PowerPort(Action<uint> onWrite) : IPortDevice
{
    public const ushort Port = 0xF4;

    public void Read(ushort offset, Span<byte> data) => data.Fill(0xFF);

    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        var value = data.Length switch
        {
            1 => data[0],
            2 => BinaryPrimitives.ReadUInt16LittleEndian(data),
            >= 4 => BinaryPrimitives.ReadUInt32LittleEndian(data),
            _ => 0u,
        };
        onWrite(value);
    }
}
