using System.Buffers.Binary;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>Guest statistics: the driver's buffer is held by the device and returned when the host asks.</summary>
public sealed partial class BalloonDevice
{
    public static readonly IReadOnlyDictionary<ushort, string> StatNames = new Dictionary<ushort, string>
    {
        [0] = "swap-in", [1] = "swap-out", [2] = "major-faults", [3] = "minor-faults", [4] = "free-memory",
        [5] = "total-memory", [6] = "available-memory", [7] = "disk-caches", [8] = "hugetlb-allocations",
        [9] = "hugetlb-failures",
    };

    private DescriptorChain? _heldStats;
    private int _statsQueue = -1;
    private Dictionary<ushort, ulong> _lastStats = [];
    private DateTimeOffset _lastStatsTime;
    private TaskCompletionSource<IReadOnlyDictionary<ushort, ulong>>? _statsWaiter;

    /// <summary>The stats the guest sent last, and when.</summary>
    public (IReadOnlyDictionary<ushort, ulong> Stats, DateTimeOffset When) LastStats
    {
        get
        {
            lock (_transport.SyncRoot)
                return (_lastStats, _lastStatsTime);
        }
    }

    /// <summary>Asks the guest for fresh statistics (returns its held buffer) and waits for them.</summary>
    public async Task<IReadOnlyDictionary<ushort, ulong>> RequestStatsAsync(TimeSpan timeout)
    {
        Task<IReadOnlyDictionary<ushort, ulong>> wait;
        lock (_transport.SyncRoot)
        {
            if (!_transport.DriverOk || !Has(STATS_VQ))
                throw new InvalidOperationException("the guest's balloon driver has not negotiated the stats queue");
            if (_heldStats is null)
                throw new InvalidOperationException("the guest has no stats buffer posted yet");
            var queue = _transport.Queue(_statsQueue);
            if (!queue.Ready)
                throw new InvalidOperationException("the guest's stats queue is not live");
            _statsWaiter ??= new TaskCompletionSource<IReadOnlyDictionary<ushort, ulong>>(TaskCreationOptions.RunContinuationsAsynchronously);
            wait = _statsWaiter.Task;
            queue.PushUsed(_heldStats.Head, 0);
            _heldStats = null;
            _transport.SignalUsed();
        }
        try
        {
            return await wait.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            throw new TimeoutException($"the guest did not answer a stats request within {timeout.TotalSeconds:0.#} s");
        }
    }

    private bool HandleStats(SplitQueue queue, DescriptorChain chain)
    {
        var returnedOld = false;
        if (_heldStats is not null)
        {
            // Only one buffer may be outstanding; return the older one unread.
            _transport.Log.Warn(Name, VirtioFaults.BadRequest, "a second stats buffer while one is held");
            queue.PushUsed(_heldStats.Head, 0);
            returnedOld = true;
        }
        var length = chain.ReadableLength;
        if (chain.WritableLength > 0 || length % 10 != 0 || length > MaxStatsBytes)
            _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"stats buffer of {length} bytes (device-readable, a multiple of 10 up to {MaxStatsBytes})");
        var data = ReadCounted(queue, chain, MaxStatsBytes);
        var stats = new Dictionary<ushort, ulong>();
        for (var i = 0; i + 10 <= data.Length; i += 10)
            stats[BinaryPrimitives.ReadUInt16LittleEndian(data.AsSpan(i))] = BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(i + 2));
        _lastStats = stats;
        _lastStatsTime = DateTimeOffset.UtcNow;
        _heldStats = chain;
        _statsQueue = QueueOf(Role.Stats);
        var waiter = _statsWaiter;
        _statsWaiter = null;
        waiter?.TrySetResult(stats);
        return returnedOld;
    }

    private void ResetStats()
    {
        _heldStats = null;
        _statsWaiter?.TrySetException(new InvalidOperationException("the balloon device was reset"));
        _statsWaiter = null;
    }
}
