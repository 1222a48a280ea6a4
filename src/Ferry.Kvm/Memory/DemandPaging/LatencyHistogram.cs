using System.Diagnostics;
using System.Numerics;

namespace Ferry.Kvm;

/// <summary>
/// Latencies in buckets of 1/8 octave (each value is known to within 12.5%), from 1 ns to 2^41 ns (~37 minutes):
/// recording is one array increment (no allocation, safe from any thread), and percentiles are read at any time.
/// Also keeps the exact count, sum and maximum.
/// </summary>
public sealed class LatencyHistogram
{
    private const int SubBits = 3;
    private const int SubBuckets = 1 << SubBits;
    private const int MaxShift = 41;
    private const int Buckets = (MaxShift - SubBits + 1) * SubBuckets + SubBuckets;

    private readonly long[] _counts = new long[Buckets];
    private long _count, _sumNs, _maxNs;

    public long Count => Interlocked.Read(ref _count);

    /// <summary>The sum of every recorded latency (for a fault histogram: the time threads spent blocked).</summary>
    public TimeSpan Total => TimeSpan.FromTicks(Interlocked.Read(ref _sumNs) / 100);

    public TimeSpan Max => TimeSpan.FromTicks(Interlocked.Read(ref _maxNs) / 100);

    /// <summary>Records the time from <paramref name="startTimestamp"/> (a <see cref="Stopwatch"/> timestamp) to now.</summary>
    public void RecordSince(long startTimestamp) =>
        Record((long)((Stopwatch.GetTimestamp() - startTimestamp) * (1e9 / Stopwatch.Frequency)));

    public void Record(long nanoseconds)
    {
        if (nanoseconds < 0)
            nanoseconds = 0;
        Interlocked.Increment(ref _counts[Index((ulong)nanoseconds)]);
        Interlocked.Increment(ref _count);
        Interlocked.Add(ref _sumNs, nanoseconds);
        var max = Interlocked.Read(ref _maxNs);
        while (nanoseconds > max)
        {
            var seen = Interlocked.CompareExchange(ref _maxNs, nanoseconds, max);
            if (seen == max)
                break;
            max = seen;
        }
    }

    /// <summary>
    /// The latency below which <paramref name="percentile"/>% of the recorded ones lie: the upper edge of the bucket
    /// holding that rank (so never an underestimate by more than rounding), capped at the maximum seen. Zero when empty.
    /// </summary>
    public TimeSpan Percentile(double percentile)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(percentile, 0);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(percentile, 100);
        var count = Count;
        if (count == 0)
            return TimeSpan.Zero;
        var rank = Math.Max(1, (long)Math.Ceiling(count * percentile / 100));
        long seen = 0;
        for (var i = 0; i < Buckets; i++)
        {
            seen += Interlocked.Read(ref _counts[i]);
            if (seen >= rank)
                return TimeSpan.FromTicks((long)Math.Min(UpperEdge(i), (ulong)Interlocked.Read(ref _maxNs)) / 100);
        }
        return Max;
    }

    private static int Index(ulong ns)
    {
        if (ns < SubBuckets)
            return (int)ns;
        var shift = Math.Min(BitOperations.Log2(ns), MaxShift);
        if (shift == MaxShift && ns >= (1UL << (MaxShift + 1)))
            return Buckets - 1;
        var sub = (int)(ns >> (shift - SubBits)) & (SubBuckets - 1);
        return (shift - SubBits + 1) * SubBuckets + sub;
    }

    private static ulong UpperEdge(int index)
    {
        if (index < SubBuckets)
            return (ulong)index;
        var shift = index / SubBuckets - 1 + SubBits;
        var sub = (ulong)(index % SubBuckets);
        var width = 1UL << (shift - SubBits);
        return ((SubBuckets + sub) << (shift - SubBits)) + width - 1;
    }
}
