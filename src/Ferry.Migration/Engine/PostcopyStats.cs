using System.Diagnostics;

namespace Ferry.Migration.Engine;

/// <summary>
/// A postcopy phase's figures. The source counts what it sent and was asked for; the destination measures what its
/// guest waited for and sends it back when done (POSTCOPY_DONE), so the source's query-migrate and `ferry migrate`'s
/// table show both. QEMU's names: postcopy-requests, postcopy-blocktime, postcopy-vcpu-blocktime.
/// </summary>
public sealed record PostcopyStats
{
    /// <summary>Pages the destination was owed at the switch (dirty or never sent, after the balloon and hints).</summary>
    public long OwedPages { get; init; }

    /// <summary>Page requests received (QEMU's postcopy-requests).</summary>
    public long Requests { get; init; }

    /// <summary>Pages sent on the urgent channel in answer to requests.</summary>
    public long UrgentPages { get; init; }

    /// <summary>Owed pages the background stream sent.</summary>
    public long BackgroundPages { get; init; }

    /// <summary>Requests for pages already sent (in flight on a bulk channel): not sent again.</summary>
    public long RequestsForSentPages { get; init; }

    /// <summary>Bytes sent after the switch, on every channel.</summary>
    public long Bytes { get; init; }

    /// <summary>Times the migration was recovered from postcopy-paused.</summary>
    public int Recoveries { get; init; }

    /// <summary>From the switch to the end (or now).</summary>
    public double ActiveMs { get; init; }

    /// <summary>Time spent in postcopy-paused.</summary>
    public double PausedMs { get; init; }

    /// <summary>Why postcopy last paused (null: it never did).</summary>
    public string? PausedBecause { get; init; }

    /// <summary>The destination's figures arrived (or, on the destination, were measured): the fields below are known.</summary>
    public bool DestinationFigures { get; init; }

    /// <summary>Faults on owed pages the destination's guest took.</summary>
    public long Faults { get; init; }

    /// <summary>Pages that reached the destination twice (a re-send after a recovery): dropped there.</summary>
    public long DuplicatePages { get; init; }

    /// <summary>Time during which every vCPU was blocked on a fault at once (QEMU's postcopy-blocktime), in ms.</summary>
    public double BlocktimeMs { get; init; }

    /// <summary>Each vCPU's time blocked on faults (QEMU's postcopy-vcpu-blocktime), in ms.</summary>
    public IReadOnlyList<double> VcpuBlocktimeMs { get; init; } = [];

    /// <summary>From a fault to its page being placed: median, 99th percentile and maximum, in µs.</summary>
    public double LatencyP50Us { get; init; }

    public double LatencyP99Us { get; init; }

    public double LatencyMaxUs { get; init; }
}

/// <summary>
/// QEMU's postcopy blocktime: per vCPU, the time it spent blocked on faults; overall, the time during which every
/// vCPU was blocked at once (the guest made no progress at all). Fed with each fault (the vCPU blocks) and each
/// placement of the page it waited for (it wakes), in the order the engine sees them. Thread-safe.
/// </summary>
public sealed class PostcopyBlocktime(int vcpus)
{
    private readonly object _gate = new();
    private readonly long[] _since = new long[vcpus];     // Stopwatch timestamp the vCPU blocked at; 0 = running
    private readonly long[] _total = new long[vcpus];     // Stopwatch ticks blocked
    private int _blocked;
    private long _allSince, _allTotal;

    public void Blocked(int vcpu, long timestamp)
    {
        if ((uint)vcpu >= (uint)_since.Length)
            return;
        lock (_gate)
        {
            if (_since[vcpu] != 0)
                return;
            _since[vcpu] = Math.Max(timestamp, 1);
            if (++_blocked == _since.Length)
                _allSince = _since[vcpu];
        }
    }

    public void Woken(int vcpu, long timestamp)
    {
        if ((uint)vcpu >= (uint)_since.Length)
            return;
        lock (_gate)
        {
            if (_since[vcpu] == 0)
                return;
            if (_blocked == _since.Length)
                _allTotal += Math.Max(0, timestamp - _allSince);
            _total[vcpu] += Math.Max(0, timestamp - _since[vcpu]);
            _since[vcpu] = 0;
            _blocked--;
        }
    }

    /// <summary>Every vCPU blocked at once, in nanoseconds (a stretch still going counts up to now).</summary>
    public ulong AllBlockedNs
    {
        get
        {
            lock (_gate)
                return Ns(_allTotal + (_blocked == _since.Length && _since.Length > 0 ? Stopwatch.GetTimestamp() - _allSince : 0));
        }
    }

    /// <summary>Each vCPU's blocked time, in nanoseconds.</summary>
    public ulong[] PerVcpuNs()
    {
        lock (_gate)
        {
            var now = Stopwatch.GetTimestamp();
            return [.. _total.Select((t, i) => Ns(t + (_since[i] != 0 ? now - _since[i] : 0)))];
        }
    }

    private static ulong Ns(long ticks) => (ulong)Math.Max(0, ticks * (1e9 / Stopwatch.Frequency));
}
