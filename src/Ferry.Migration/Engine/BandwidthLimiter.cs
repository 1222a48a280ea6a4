using System.Diagnostics;

namespace Ferry.Migration.Engine;

/// <summary>
/// One budget for all channels: each send reserves its bytes on a shared timeline and sleeps until its slot. Bursts
/// are bounded to about 10 ms of the rate. A limit of 0 means unlimited (no locking at all).
/// </summary>
public sealed class BandwidthLimiter
{
    private readonly object _gate = new();
    private long _bytesPerSecond;
    private double _nextFreeSeconds;

    public BandwidthLimiter(long bytesPerSecond) => _bytesPerSecond = bytesPerSecond;

    public long BytesPerSecond
    {
        get => Volatile.Read(ref _bytesPerSecond);
        set => Volatile.Write(ref _bytesPerSecond, value);
    }

    public void Acquire(long bytes, CancellationToken cancel)
    {
        var rate = BytesPerSecond;
        if (rate <= 0)
            return;
        double wait;
        lock (_gate)
        {
            var now = Stopwatch.GetTimestamp() / (double)Stopwatch.Frequency;
            _nextFreeSeconds = Math.Max(_nextFreeSeconds, now - 0.010) + bytes / (double)rate;
            wait = _nextFreeSeconds - now;
        }
        if (wait > 0)
            cancel.WaitHandle.WaitOne(TimeSpan.FromSeconds(wait));
        cancel.ThrowIfCancellationRequested();
    }
}
