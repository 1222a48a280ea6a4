namespace Ferry.Migration.Engine;

/// <summary>
/// Tunables, as the engine reads them. Names, ranges, defaults and docs are declared once, in
/// <see cref="MigrationParameterTable"/> (QEMU's migrate-set-parameters names where QEMU has the same thing;
/// Ferry-only ones are prefixed `ferry-`); <see cref="Validate"/> checks every entry, naming the bad value.
/// </summary>
public sealed record MigrationParameters
{
    /// <summary>max-bandwidth: bytes per second over all channels; 0 = unlimited.</summary>
    public long MaxBandwidth { get; init; } = MigrationParameterTable.MaxBandwidth.Default;

    /// <summary>downtime-limit, in milliseconds.</summary>
    public long DowntimeLimitMs { get; init; } = MigrationParameterTable.DowntimeLimit.Default;

    /// <summary>multifd-channels: parallel channels when the multifd capability is on.</summary>
    public int MultifdChannels { get; init; } = (int)MigrationParameterTable.MultifdChannels.Default;

    public int CpuThrottleInitial { get; init; } = (int)MigrationParameterTable.CpuThrottleInitial.Default;
    public int CpuThrottleIncrement { get; init; } = (int)MigrationParameterTable.CpuThrottleIncrement.Default;
    public int MaxCpuThrottle { get; init; } = (int)MigrationParameterTable.MaxCpuThrottle.Default;

    /// <summary>throttle-trigger-threshold, in percent.</summary>
    public int ThrottleTriggerThreshold { get; init; } = (int)MigrationParameterTable.ThrottleTriggerThreshold.Default;

    /// <summary>ferry-hint-budget-ms.</summary>
    public int HintBudgetMs { get; init; } = (int)MigrationParameterTable.HintBudget.Default;

    /// <summary>ferry-switchover-timeout-ms.</summary>
    public int SwitchoverTimeoutMs { get; init; } = (int)MigrationParameterTable.SwitchoverTimeout.Default;

    /// <summary>ferry-channel-timeout-ms: a peer silent this long (no data, no keepalive) fails the migration.</summary>
    public int ChannelTimeoutMs { get; init; } = (int)MigrationParameterTable.ChannelTimeout.Default;

    /// <summary>tls-creds: the credentials directory; empty = plain channels.</summary>
    public string TlsCreds { get; init; } = "";

    /// <summary>tls-hostname: the destination's name in its certificate; empty = the URI's host.</summary>
    public string TlsHostname { get; init; } = "";

    /// <summary>tls-authz: allowed client subjects separated by ';'; empty = any the CA signed.</summary>
    public string TlsAuthz { get; init; } = "";

    /// <summary>tls-authz as a list of subjects.</summary>
    public IReadOnlyList<string> AllowedClientSubjects => TlsAuthz.Split(';', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries);

    /// <summary>ferry-postcopy-after-passes: with postcopy-ram, switch to postcopy after this many passes in a row over downtime-limit (0 = only on migrate-start-postcopy).</summary>
    public int PostcopyAfterPasses { get; init; } = (int)MigrationParameterTable.PostcopyAfterPasses.Default;

    /// <summary>How many channels a migration opens: multifd-channels with the multifd capability, else one.</summary>
    public int ChannelsFor(MigrationCapabilities capabilities) => capabilities.Multifd ? MultifdChannels : 1;

    /// <summary>Throws <see cref="ArgumentException"/> naming the first value outside its range.</summary>
    public void Validate()
    {
        foreach (var parameter in MigrationParameterTable.All)
        {
            if (parameter.Check(parameter.Get(this)) is { } error)
                throw new ArgumentException(error);
        }
        foreach (var parameter in MigrationParameterTable.Texts)
        {
            if (parameter.Check(parameter.Get(this)) is { } error)
                throw new ArgumentException(error);
        }
    }
}

/// <summary>Capabilities (migrate-set-capabilities), as the engine reads them; declared in <see cref="MigrationCapabilityTable"/>.</summary>
public sealed record MigrationCapabilities
{
    /// <summary>multifd: several parallel channels.</summary>
    public bool Multifd { get; init; } = MigrationCapabilityTable.Multifd.Default;

    /// <summary>auto-converge: throttle vCPUs while the dirty rate outruns the bandwidth.</summary>
    public bool AutoConverge { get; init; } = MigrationCapabilityTable.AutoConverge.Default;

    /// <summary>ferry-free-page-hint: use the balloon's free page hinting to skip free pages (QEMU ties this to the device's free-page-hint property).</summary>
    public bool FreePageHint { get; init; } = MigrationCapabilityTable.FreePageHint.Default;

    /// <summary>ferry-balloon-skip: skip pages in the balloon when the guest negotiated MUST_TELL_HOST.</summary>
    public bool BalloonSkip { get; init; } = MigrationCapabilityTable.BalloonSkip.Default;

    /// <summary>ferry-verify: at the switch-over the destination compares a digest of every chunk with the source's before it resumes the guest.</summary>
    public bool Verify { get; init; } = MigrationCapabilityTable.Verify.Default;

    /// <summary>events: QMP's MIGRATION and MIGRATION_PASS events are emitted (read by the control layer, not the engine).</summary>
    public bool Events { get; init; } = MigrationCapabilityTable.Events.Default;

    /// <summary>mapped-ram: a file: URI holds the fixed-offset snapshot file (read by the control layer, not the engine).</summary>
    public bool MappedRam { get; init; } = MigrationCapabilityTable.MappedRam.Default;

    /// <summary>postcopy-ram: the migration may switch to postcopy (migrate-start-postcopy, or ferry-postcopy-after-passes).</summary>
    public bool PostcopyRam { get; init; } = MigrationCapabilityTable.PostcopyRam.Default;
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

    /// <summary>The guest runs on the destination, which pulls the pages it is still owed (QEMU's postcopy-active).</summary>
    PostcopyActive,

    /// <summary>Postcopy lost its connection: both sides wait for a recovery, nothing is lost (QEMU's postcopy-paused).</summary>
    PostcopyPaused,
}

public static class MigrationStatusNames
{
    /// <summary>Completed, Failed or Cancelled: nothing follows (the MIGRATION event for it is the last).</summary>
    public static bool IsFinal(this MigrationStatus status) => status is MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled;

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
        MigrationStatus.PostcopyActive => "postcopy-active",
        MigrationStatus.PostcopyPaused => "postcopy-paused",
        _ => "cancelled",
    };
}
