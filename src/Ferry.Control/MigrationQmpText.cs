using Ferry.Migration.Engine;

namespace Ferry.Control;

/// <summary>
/// The engine's modes and reasons as query-migrate spells them (the `ferry` object): the one place they become
/// text. The CLI prints what QMP returns, so it shows the same words.
/// </summary>
public static class MigrationQmpText
{
    /// <summary>query-migrate's "ferry-error-kind": the kind of failure in kebab case ("cancelled", "channel-failed", ...).</summary>
    public static string ErrorKind(MigrationErrorKind kind) => kind switch
    {
        MigrationErrorKind.Internal => "internal",
        MigrationErrorKind.Cancelled => "cancelled",
        MigrationErrorKind.ChannelFailed => "channel-failed",
        MigrationErrorKind.DestinationRefused => "destination-refused",
        MigrationErrorKind.DestinationFailed => "destination-failed",
        MigrationErrorKind.Timeout => "timeout",
        MigrationErrorKind.InvalidStream => "invalid-stream",
        MigrationErrorKind.OutputFailed => "output-failed",
        MigrationErrorKind.TlsRefused => "tls-refused",
        MigrationErrorKind.VerifyFailed => "verify-failed",
        _ => throw new ArgumentOutOfRangeException(nameof(kind), kind, null),
    };

    /// <summary>"on", or "off: " and why ballooned pages are sent.</summary>
    public static string BalloonSkip(BalloonSkipReason reason) => reason switch
    {
        BalloonSkipReason.On => "on",
        BalloonSkipReason.NoBalloon => "off: the machine has no balloon",
        BalloonSkipReason.CapabilityOff => "off: capability ferry-balloon-skip is off",
        BalloonSkipReason.DriverNotReady => "off: the guest's balloon driver is not ready",
        BalloonSkipReason.NoMustTellHost => "off: the guest did not negotiate MUST_TELL_HOST, so ballooned pages are sent as ordinary pages",
        _ => throw new ArgumentOutOfRangeException(nameof(reason), reason, null),
    };

    /// <summary>"on", or "off: " and why free pages are sent.</summary>
    public static string FreePageHint(FreePageHintReason reason, uint poisonValue) => reason switch
    {
        FreePageHintReason.On => "on",
        FreePageHintReason.NoBalloon => "off: the machine has no balloon",
        FreePageHintReason.CapabilityOff => "off: capability ferry-free-page-hint is off",
        FreePageHintReason.NotNegotiated => "off: the guest did not negotiate FREE_PAGE_HINT",
        FreePageHintReason.GuestPoisons => $"off: the guest poisons free pages with 0x{poisonValue:X8}, so they must be sent",
        FreePageHintReason.GuestPaused => "off: the guest is paused (it cannot answer)",
        _ => throw new ArgumentOutOfRangeException(nameof(reason), reason, null),
    };

    public static string FreePageHint(MigrationStats stats) => FreePageHint(stats.FreePageHint, stats.PoisonValue);

    /// <summary>
    /// Why the migration keeps iterating: the figures, then what auto-converge did. A pass 1 that was within the
    /// limit but left a running guest's first dirty set (<see cref="NotConvergingReason.FirstPassDirtySet"/>) reads
    /// the same as one over the limit, as it always has.
    /// </summary>
    public static string NotConverging(NotConverging why)
    {
        var text = $"pass {why.Pass}: expected downtime {why.ExpectedDowntimeMs:F0} ms is over downtime-limit {why.DowntimeLimitMs} ms " +
                   $"({why.DirtyPages} dirty pages, dirty rate {why.DirtyPagesPerSecond * Ferry.Kvm.Page.Size / (1 << 20):F0} MiB/s, bandwidth {why.BandwidthBytesPerSecond / (1 << 20):F0} MiB/s)";
        return why.AutoConverge switch
        {
            AutoConvergeStep.Throttled => text + $"; auto-converge throttles the vCPUs to {why.ThrottlePercent}%",
            AutoConvergeStep.Off => text + "; auto-converge is off, so the migration keeps iterating",
            _ => text,
        };
    }
}
