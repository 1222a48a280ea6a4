namespace Ferry.Devices;

/// <summary>A device reachable through x86 port I/O. Offsets are relative to the device's base port.</summary>
public interface IPortDevice
{
    void Read(ushort offset, Span<byte> data);

    void Write(ushort offset, ReadOnlySpan<byte> data);
}

/// <summary>
/// Routes port accesses to devices. Unclaimed ports read as all ones (an open bus) and ignore writes, so a
/// guest probing for hardware that is not there sees nothing rather than stopping the VM.
/// </summary>
public sealed class IoBus
{
    private readonly RangeMap<IPortDevice> _devices = new();

    public long UnclaimedAccesses;

    public void Register(ushort basePort, ushort length, IPortDevice device) => _devices.Add(basePort, length, device, "ports");

    public void Read(ushort port, Span<byte> data)
    {
        if (_devices.TryFind(port, out var device, out var offset))
        {
            device.Read((ushort)offset, data);
            return;
        }
        Interlocked.Increment(ref UnclaimedAccesses);
        data.Fill(0xFF);
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        if (_devices.TryFind(port, out var device, out var offset))
            device.Write((ushort)offset, data);
        else
            Interlocked.Increment(ref UnclaimedAccesses);
    }
}
