namespace Ferry.Migration.Engine;

/// <summary>Figures of one pass over RAM (the JSON report lists them; query-migrate shows the totals).</summary>
public sealed record PassReport(
    int Pass,
    double DurationMs,
    long Bytes,
    long NormalPages,
    long ZeroPages,
    long HintedPages,
    long BalloonedPages,
    long DirtyPagesAfter,
    double DirtyPagesPerSecond,
    double BandwidthBytesPerSecond,
    double ExpectedDowntimeMs,
    int ThrottlePercent);

/// <summary>
/// Where the downtime went, in order: stopping hints and pausing the vCPUs, the last dirty-log sync, the last pass,
/// the digests of a verified migration (0 without ferry-verify), saving vCPU and device state, the output's
/// completion (a destination: the state travels, is loaded, the digests are compared and the guest started, until
/// RESUMED comes back; a snapshot: state and metadata written), and resuming a snapshotted guest.
/// </summary>
public sealed record DowntimePhases(double PauseMs, double SyncMs, double FinalPassMs, double VerifyMs, double SaveStateMs, double CompleteMs, double ResumeMs);

/// <summary>
/// Where the setup went, in order: opening the output (connecting channels, the destination's hello; creating a
/// file), one-time preparation of the state path, turning dirty logging on, walking every block's data extents,
/// reading the balloon, and the free page hint run's wait before pass 1.
/// </summary>
public sealed record SetupPhases(double OpenMs, double PrepareStateMs, double DirtyLoggingMs, double ExtentsMs, double BalloonMs, double HintWaitMs);

/// <summary>A snapshot of a migration's progress, the counterpart of QEMU's query-migrate.</summary>
public sealed record MigrationStats
{
    public MigrationStatus Status { get; init; }
    public string? Error { get; init; }

    /// <summary>What kind of failure <see cref="Error"/> is (null unless the migration failed or was cancelled).</summary>
    public MigrationErrorKind? ErrorKind { get; init; }

    /// <summary>
    /// The migration failed after the point of no return (the whole state was sent) without the destination saying
    /// it failed: it may be running the guest, so the source guest was left paused (QEMU's run state `postmigrate`).
    /// Only the management layer can tell which copy to keep; resuming the source is an explicit `cont`.
    /// </summary>
    public bool DestinationMayBeRunning { get; init; }
    public double TotalTimeMs { get; init; }
    public double SetupTimeMs { get; init; }

    /// <summary>The setup split into its phases (once setup is over).</summary>
    public SetupPhases? Setup { get; init; }
    public double? DowntimeMs { get; init; }

    /// <summary>The downtime split into its phases (once the migration completed).</summary>
    public DowntimePhases? Downtime { get; init; }
    public double ExpectedDowntimeMs { get; init; }
    public long TransferredBytes { get; init; }
    public long RemainingBytes { get; init; }
    public long TotalBytes { get; init; }
    public long NormalPages { get; init; }
    public long ZeroPages { get; init; }
    public long UntouchedPages { get; init; }
    public long BalloonedPages { get; init; }
    public long HintedPages { get; init; }

    /// <summary>Pages in the balloon that were sent anyway because the balloon was not trusted (see <see cref="BalloonSkip"/>).</summary>
    public long BalloonedPagesSent { get; init; }
    public long DirtySyncCount { get; init; }
    public double DirtyPagesRate { get; init; }
    public double Mbps { get; init; }
    public int ThrottlePercent { get; init; }
    public int Channels { get; init; }

    /// <summary>Whether ballooned pages are skipped, or why not (e.g. the guest did not negotiate MUST_TELL_HOST).</summary>
    public BalloonSkipReason BalloonSkip { get; init; }

    /// <summary>Whether free page hints drop free pages, or why not.</summary>
    public FreePageHintReason FreePageHint { get; init; }

    /// <summary>The guest's free page poison value (0 = none); non-zero turns hinting off (<see cref="FreePageHintReason.GuestPoisons"/>).</summary>
    public uint PoisonValue { get; init; }

    /// <summary>Chunks whose digest the source sent for the destination to compare (ferry-verify; 0 without it).</summary>
    public long VerifiedChunks { get; init; }

    /// <summary>Why the last pass did not switch over, while the migration keeps iterating.</summary>
    public NotConverging? NotConverging { get; init; }

    /// <summary>The postcopy phase's figures, once the migration switched to postcopy (null: it did not).</summary>
    public PostcopyStats? Postcopy { get; init; }
    public IReadOnlyList<PassReport> Passes { get; init; } = [];

    /// <summary>Bytes sent while the guest ran (QEMU's precopy-bytes): all of them until the switch-over.</summary>
    public long PrecopyBytes => Downtime is null || Passes.Count == 0 ? TransferredBytes : Passes.Take(Passes.Count - 1).Sum(p => p.Bytes);

    /// <summary>Bytes sent while the guest was paused (QEMU's downtime-bytes): the last pass and the state.</summary>
    public long DowntimeBytes => TransferredBytes - PrecopyBytes;

    /// <summary>
    /// Pages (with data or zero) handled per second in the last pass, or in the running first pass before any pass
    /// ended (QEMU's pages-per-second).
    /// </summary>
    public double PagesPerSecond
    {
        get
        {
            if (Passes.Count > 0 && Passes[^1].DurationMs > 0)
                return (Passes[^1].NormalPages + Passes[^1].ZeroPages) / (Passes[^1].DurationMs / 1000);
            var sendingMs = TotalTimeMs - SetupTimeMs;
            return sendingMs > 0 ? (NormalPages + ZeroPages) / (sendingMs / 1000) : 0;
        }
    }
}
