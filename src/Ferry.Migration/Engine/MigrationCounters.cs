namespace Ferry.Migration.Engine;

/// <summary>
/// Every figure a migration reports, in one place. Page counters are bumped by the sender threads and by free page
/// hints on vCPU threads, so they are <see cref="Interlocked"/>; the rest is written by the migration thread and
/// read by query-migrate, under one lock. <see cref="ToStats"/> makes the <see cref="MigrationStats"/>.
/// </summary>
internal sealed class MigrationCounters
{
    private readonly object _gate = new();
    private readonly List<PassReport> _passes = [];
    private long _normalPages, _zeroPages, _untouchedPages, _balloonedPages, _hintedPages, _balloonedSent, _syncCount, _verifiedChunks;
    private double _setupMs, _expectedDowntimeMs, _dirtyRate;
    private double? _downtimeMs;
    private DowntimePhases? _downtime;
    private SetupPhases? _setup;
    private long _remainingBytes;
    private NotConverging? _notConverging;
    private string? _error;
    private MigrationErrorKind? _errorKind;
    private bool _destinationMayBeRunning;
    private BalloonSkipReason _balloonSkip;
    private FreePageHintReason _freePageHint;
    private uint _poisonValue;
    private volatile int _throttle;

    /// <summary>The page counters at one moment, to tell what a pass added.</summary>
    public readonly record struct Pages(long Normal, long Zero, long Hinted, long Ballooned);

    public Pages Now => new(Interlocked.Read(ref _normalPages), Interlocked.Read(ref _zeroPages), Interlocked.Read(ref _hintedPages), Interlocked.Read(ref _balloonedPages));

    public void AddSent(long normal, long zero)
    {
        if (normal != 0)
            Interlocked.Add(ref _normalPages, normal);
        if (zero != 0)
            Interlocked.Add(ref _zeroPages, zero);
    }

    public void AddHinted(long pages) => Interlocked.Add(ref _hintedPages, pages);

    public void AddUntouched(long pages) => Interlocked.Add(ref _untouchedPages, pages);

    /// <summary>Pages of a trusted balloon kept out of a pass, and pages of an untrusted one sent anyway.</summary>
    public void AddBallooned(long skipped, long sentAnyway)
    {
        if (skipped != 0)
            Interlocked.Add(ref _balloonedPages, skipped);
        if (sentAnyway != 0)
            Interlocked.Add(ref _balloonedSent, sentAnyway);
    }

    public void AddSync() => Interlocked.Increment(ref _syncCount);

    /// <summary>The digests of a verified migration were sent for this many chunks.</summary>
    public void Verified(long chunks) => Interlocked.Exchange(ref _verifiedChunks, chunks);

    /// <summary>The vCPU throttle now in force (0 = none).</summary>
    public int Throttle
    {
        get => _throttle;
        set => _throttle = value;
    }

    public double? LastBandwidth
    {
        get
        {
            lock (_gate)
                return _passes.Count > 0 ? _passes[^1].BandwidthBytesPerSecond : null;
        }
    }

    public void SetModes(BalloonSkipReason balloonSkip, FreePageHintReason freePageHint, uint poisonValue)
    {
        lock (_gate)
            (_balloonSkip, _freePageHint, _poisonValue) = (balloonSkip, freePageHint, poisonValue);
    }

    public void SetupDone(double ms, SetupPhases phases)
    {
        lock (_gate)
            (_setupMs, _setup) = (ms, phases);
    }

    /// <summary>A live pass is over: its report, and what is left to send as of its sync.</summary>
    public void PassDone(PassReport report, long remainingBytes)
    {
        lock (_gate)
        {
            _passes.Add(report);
            _remainingBytes = remainingBytes;
            _expectedDowntimeMs = report.ExpectedDowntimeMs;
            _dirtyRate = report.DirtyPagesPerSecond;
        }
    }

    public void NotConvergingBecause(NotConverging? why)
    {
        lock (_gate)
            _notConverging = why;
    }

    public void FinalPassDone(PassReport report)
    {
        lock (_gate)
            _passes.Add(report);
    }

    public void Completed(double downtimeMs, DowntimePhases phases)
    {
        lock (_gate)
        {
            _downtimeMs = downtimeMs;
            _downtime = phases;
            _remainingBytes = 0;
            _notConverging = null;
        }
    }

    public void Failed(MigrationErrorKind kind, string message, bool destinationMayBeRunning)
    {
        lock (_gate)
            (_errorKind, _error, _destinationMayBeRunning) = (kind, message, destinationMayBeRunning);
    }

    public MigrationStats ToStats(MigrationStatus status, TimeSpan elapsed, IReadOnlyList<IPageSink> sinks, long totalBytes)
    {
        lock (_gate)
        {
            long transferred = 0;
            foreach (var sink in sinks)
                transferred += sink.BytesWritten;
            var seconds = elapsed.TotalSeconds;
            return new MigrationStats
            {
                Status = status,
                Error = _error,
                ErrorKind = _errorKind,
                DestinationMayBeRunning = _destinationMayBeRunning,
                TotalTimeMs = elapsed.TotalMilliseconds,
                SetupTimeMs = _setupMs,
                Setup = _setup,
                DowntimeMs = _downtimeMs,
                Downtime = _downtime,
                ExpectedDowntimeMs = _expectedDowntimeMs,
                TransferredBytes = transferred,
                RemainingBytes = _remainingBytes,
                TotalBytes = totalBytes,
                NormalPages = Interlocked.Read(ref _normalPages),
                ZeroPages = Interlocked.Read(ref _zeroPages),
                UntouchedPages = Interlocked.Read(ref _untouchedPages),
                BalloonedPages = Interlocked.Read(ref _balloonedPages),
                HintedPages = Interlocked.Read(ref _hintedPages),
                BalloonedPagesSent = Interlocked.Read(ref _balloonedSent),
                DirtySyncCount = Interlocked.Read(ref _syncCount),
                VerifiedChunks = Interlocked.Read(ref _verifiedChunks),
                DirtyPagesRate = _dirtyRate,
                Mbps = seconds > 0 ? transferred * 8 / seconds / 1e6 : 0,
                ThrottlePercent = _throttle,
                Channels = sinks.Count,
                BalloonSkip = _balloonSkip,
                FreePageHint = _freePageHint,
                PoisonValue = _poisonValue,
                NotConverging = _notConverging,
                Passes = [.. _passes],
            };
        }
    }
}
