namespace Ferry.Devices;

/// <summary>Non-overlapping address ranges, each owned by one device: the lookup shared by the port and MMIO buses.</summary>
public sealed class RangeMap<TDevice> where TDevice : class
{
    private readonly List<(ulong Base, ulong Length, TDevice Device)> _ranges = [];

    public void Add(ulong baseAddress, ulong length, TDevice device, string what)
    {
        foreach (var (b, l, _) in _ranges)
        {
            if (baseAddress < b + l && b < baseAddress + length)
                throw new ArgumentException($"{what} 0x{baseAddress:X}+0x{length:X} overlaps a device at 0x{b:X}");
        }
        _ranges.Add((baseAddress, length, device));
    }

    public bool TryFind(ulong address, out TDevice device, out ulong offset)
    {
        foreach (var (b, l, d) in _ranges)
        {
            if (address >= b && address - b < l)
            {
                device = d;
                offset = address - b;
                return true;
            }
        }
        device = null!;
        offset = 0;
        return false;
    }
}
