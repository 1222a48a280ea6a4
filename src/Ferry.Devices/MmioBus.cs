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
    private readonly RangeMap<IMmioDevice> _devices = new();

    public long UnclaimedAccesses;

    public void Register(ulong baseAddress, ulong length, IMmioDevice device) => _devices.Add(baseAddress, length, device, "MMIO range");

    public void Read(ulong address, Span<byte> data)
    {
        if (_devices.TryFind(address, out var device, out var offset))
        {
            device.Read(offset, data);
            return;
        }
        Interlocked.Increment(ref UnclaimedAccesses);
        data.Fill(0xFF);
    }

    public void Write(ulong address, ReadOnlySpan<byte> data)
    {
        if (_devices.TryFind(address, out var device, out var offset))
            device.Write(offset, data);
        else
            Interlocked.Increment(ref UnclaimedAccesses);
    }
}
