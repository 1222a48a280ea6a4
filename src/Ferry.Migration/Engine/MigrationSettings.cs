namespace Ferry.Migration.Engine;

/// <summary>
/// Tunables, named as QEMU's migrate-set-parameters names them where QEMU has the same thing; Ferry-only ones are
/// prefixed `ferry-` on the QMP side. Validated by <see cref="Validate"/> with messages that name the bad value.
/// </summary>
public sealed record MigrationParameters
{
    /// <summary>Bytes per second over all channels; 0 = unlimited (QEMU's default is 128 MiB/s; Ferry's is as fast as the link).</summary>
    public long MaxBandwidth { get; init; }

    /// <summary>Largest acceptable downtime in milliseconds (QEMU's default 300).</summary>
    public long DowntimeLimitMs { get; init; } = 300;

    /// <summary>Parallel channels when the multifd capability is on (QEMU: multifd-channels; Ferry's default: one per core).</summary>
    public int MultifdChannels { get; init; } = Math.Clamp(Environment.ProcessorCount, 1, 16);

    public int CpuThrottleInitial { get; init; } = 20;
    public int CpuThrottleIncrement { get; init; } = 10;
    public int MaxCpuThrottle { get; init; } = 99;

    /// <summary>Percent of the bytes sent in a pass that, dirtied again during it, counts as "not converging" (QEMU's throttle-trigger-threshold).</summary>
    public int ThrottleTriggerThreshold { get; init; } = 50;

    /// <summary>How long the first pass waits for the guest to finish its free page hint run (ferry-hint-budget-ms).</summary>
    public int HintBudgetMs { get; init; } = 500;

    /// <summary>How long the source waits for the destination to report the guest running after the last byte (ferry-switchover-timeout-ms).</summary>
    public int SwitchoverTimeoutMs { get; init; } = 30_000;

    public void Validate()
    {
        Check(MaxBandwidth >= 0, $"max-bandwidth {MaxBandwidth} is negative");
        Check(DowntimeLimitMs is >= 1 and <= 2_000_000, $"downtime-limit {DowntimeLimitMs} is outside 1..2000000 ms");
        Check(MultifdChannels is >= 1 and <= Stream.StreamHeader.MaxChannels, $"multifd-channels {MultifdChannels} is outside 1..{Stream.StreamHeader.MaxChannels}");
        Check(CpuThrottleInitial is >= 1 and <= 99, $"cpu-throttle-initial {CpuThrottleInitial} is outside 1..99");
        Check(CpuThrottleIncrement is >= 1 and <= 99, $"cpu-throttle-increment {CpuThrottleIncrement} is outside 1..99");
        Check(MaxCpuThrottle is >= 1 and <= 99, $"max-cpu-throttle {MaxCpuThrottle} is outside 1..99");
        Check(ThrottleTriggerThreshold is >= 1 and <= 100, $"throttle-trigger-threshold {ThrottleTriggerThreshold} is outside 1..100");
        Check(HintBudgetMs is >= 0 and <= 60_000, $"ferry-hint-budget-ms {HintBudgetMs} is outside 0..60000");
        Check(SwitchoverTimeoutMs is >= 100 and <= 600_000, $"ferry-switchover-timeout-ms {SwitchoverTimeoutMs} is outside 100..600000");
    }

    private static void Check(bool ok, string message)
    {
        if (!ok)
            throw new ArgumentException(message);
    }
}

/// <summary>Capabilities (migrate-set-capabilities). QEMU names where QEMU has the same thing.</summary>
public sealed record MigrationCapabilities
{
    /// <summary>Several parallel channels (QEMU: multifd). On by default in Ferry.</summary>
    public bool Multifd { get; init; } = true;

    /// <summary>Throttle vCPUs while the dirty rate outruns the bandwidth (QEMU: auto-converge).</summary>
    public bool AutoConverge { get; init; }

    /// <summary>Use the balloon's free page hinting to skip free pages (ferry-free-page-hint; QEMU ties this to the device's free-page-hint property).</summary>
    public bool FreePageHint { get; init; } = true;

    /// <summary>Skip pages in the balloon when the guest negotiated MUST_TELL_HOST (ferry-balloon-skip).</summary>
    public bool BalloonSkip { get; init; } = true;
}

public enum MigrationStatus
{
    None,
    Setup,
    Active,
    Device,
    Completed,
    Failed,
    Cancelling,
    Cancelled,
}

public static class MigrationStatusNames
{
    /// <summary>QEMU's spelling of each status.</summary>
    public static string ToQmp(this MigrationStatus status) => status switch
    {
        MigrationStatus.None => "none",
        MigrationStatus.Setup => "setup",
        MigrationStatus.Active => "active",
        MigrationStatus.Device => "device",
        MigrationStatus.Completed => "completed",
        MigrationStatus.Failed => "failed",
        MigrationStatus.Cancelling => "cancelling",
        _ => "cancelled",
    };
}
