namespace Ferry.Devices;

/// <summary>A device reachable through MMIO at guest-physical addresses with no RAM behind them.</summary>
public interface IMmioDevice
{
    void Read(ulong offset, Span<byte> data);

    void Write(ulong offset, ReadOnlySpan<byte> data);
}

/// <summary>Routes MMIO exits to devices; unclaimed addresses read as all ones and ignore writes.</summary>
public sealed class MmioBus
{
    private readonly List<(ulong Base, ulong Length, IMmioDevice Device)> _ranges = [];

    public long UnclaimedAccesses;

    public void Register(ulong baseAddress, ulong length, IMmioDevice device)
    {
        foreach (var (b, l, _) in _ranges)
        {
            if (baseAddress < b + l && b < baseAddress + length)
                throw new ArgumentException($"MMIO range 0x{baseAddress:X}+0x{length:X} overlaps a device at 0x{b:X}");
        }
        _ranges.Add((baseAddress, length, device));
    }

    public void Read(ulong address, Span<byte> data)
    {
        foreach (var (b, l, d) in _ranges)
        {
            if (address >= b && address - b < l)
            {
                d.Read(address - b, data);
                return;
            }
        }
        Interlocked.Increment(ref UnclaimedAccesses);
        data.Fill(0xFF);
    }

    public void Write(ulong address, ReadOnlySpan<byte> data)
    {
        foreach (var (b, l, d) in _ranges)
        {
            if (address >= b && address - b < l)
            {
                d.Write(address - b, data);
                return;
            }
        }
        Interlocked.Increment(ref UnclaimedAccesses);
    }
}
