namespace Ferry.Devices.Virtio;

/// <summary>
/// A virtio device behind a transport. Every call is made with the transport's lock held (the transport calls
/// in from vCPU threads; host-side callers take <see cref="IVirtioTransport.SyncRoot"/> themselves).
/// </summary>
public interface IVirtioDevice
{
    string Name { get; }

    uint DeviceId { get; }

    ulong DeviceFeatures { get; }

    /// <summary>Queues the transport exposes through QueueSel (the most any feature set uses).</summary>
    int QueueCount { get; }

    ushort QueueMaxSize { get; }

    int ConfigSize { get; }

    void ReadConfig(int offset, Span<byte> data);

    void WriteConfig(int offset, ReadOnlySpan<byte> data);

    /// <summary>The driver set DRIVER_OK: features are final and queues are set up.</summary>
    void Activate();

    void QueueNotify(int queueIndex);

    /// <summary>The driver wrote 0 to Status, or the device is being reset.</summary>
    void Reset();
}

/// <summary>What a device needs from its transport.</summary>
public interface IVirtioTransport
{
    Lock SyncRoot { get; }

    ulong NegotiatedFeatures { get; }

    bool DriverOk { get; }

    /// <summary>The device status register (DRIVER_OK stays set while DEVICE_NEEDS_RESET is).</summary>
    uint Status { get; }

    SplitQueue Queue(int index);

    /// <summary>Buffers were returned on a queue (sets InterruptStatus bit 0).</summary>
    void SignalUsed();

    /// <summary>The device changed its configuration (bumps ConfigGeneration, sets InterruptStatus bit 1).</summary>
    void SignalConfigChange();

    /// <summary>The device cannot go on with this driver state: sets DEVICE_NEEDS_RESET and logs the fault.</summary>
    void NeedsReset(string fault, string detail);

    DeviceLog Log { get; }
}

/// <summary>Feature bits and status bits shared by every virtio device.</summary>
public static class VirtioBits
{
    public const int VERSION_1 = 32;

    public const uint StatusAcknowledge = 1;
    public const uint StatusDriver = 2;
    public const uint StatusDriverOk = 4;
    public const uint StatusFeaturesOk = 8;
    public const uint StatusNeedsReset = 0x40;
    public const uint StatusFailed = 0x80;

    public static bool Has(ulong features, int bit) => (features & (1UL << bit)) != 0;
}
