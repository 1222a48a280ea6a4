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
    private readonly List<(ushort Base, ushort Length, IPortDevice Device)> _ranges = [];

    public long UnclaimedAccesses;

    public void Register(ushort basePort, ushort length, IPortDevice device)
    {
        foreach (var (b, l, _) in _ranges)
        {
            if (basePort < b + l && b < basePort + length)
                throw new ArgumentException($"ports 0x{basePort:X}+{length} overlap a device at 0x{b:X}+{l}");
        }
        _ranges.Add((basePort, length, device));
    }

    public void Read(ushort port, Span<byte> data)
    {
        if (TryFind(port, out var device, out var offset))
        {
            device.Read(offset, data);
            return;
        }
        Interlocked.Increment(ref UnclaimedAccesses);
        data.Fill(0xFF);
    }

    public void Write(ushort port, ReadOnlySpan<byte> data)
    {
        if (TryFind(port, out var device, out var offset))
            device.Write(offset, data);
        else
            Interlocked.Increment(ref UnclaimedAccesses);
    }

    private bool TryFind(ushort port, out IPortDevice device, out ushort offset)
    {
        foreach (var (b, l, d) in _ranges)
        {
            if (port >= b && port < b + l)
            {
                device = d;
                offset = (ushort)(port - b);
                return true;
            }
        }
        device = null!;
        offset = 0;
        return false;
    }
}
