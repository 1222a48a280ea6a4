namespace Ferry.Migration.Engine;

/// <summary>What a parameter's number counts; decides how an error message and a command line spell it.</summary>
public enum ParameterUnit
{
    BytesPerSecond,
    Milliseconds,
    Count,
    Percent,
}

/// <summary>
/// One migration parameter, declared once: its QMP name, unit, range, default, a one-line doc, where it lives in
/// the typed <see cref="MigrationParameters"/> record, and the `ferry migrate` option that sets it (null: none).
/// Values are integers on every surface (QMP, command line); <see cref="Max"/> = <see cref="long.MaxValue"/>
/// means "no upper bound".
/// </summary>
public sealed class MigrationParameter(
    string name, ParameterUnit unit, long min, long max, long defaultValue, string doc,
    Func<MigrationParameters, long> get, Func<MigrationParameters, long, MigrationParameters> set, string? cliOption = null)
{
    public string Name { get; } = name;
    public ParameterUnit Unit { get; } = unit;
    public long Min { get; } = min;
    public long Max { get; } = max;
    public long Default { get; } = defaultValue;
    public string Doc { get; } = doc;
    public string? CliOption { get; } = cliOption;

    public long Get(MigrationParameters parameters) => get(parameters);

    /// <summary>A copy of <paramref name="parameters"/> with this parameter set (unchecked: see <see cref="Check"/>, <see cref="MigrationParameters.Validate"/>).</summary>
    public MigrationParameters Set(MigrationParameters parameters, long value) => set(parameters, value);

    /// <summary>Null when <paramref name="value"/> is in range, else one line naming the parameter, the value and the range.</summary>
    public string? Check(long value)
    {
        if (value >= Min && value <= Max)
            return null;
        if (Max == long.MaxValue)
            return Min == 0 ? $"{Name} {value} is negative" : $"{Name} {value} is below {Min}";
        // "downtime-limit 0 is outside 1..2000000 ms"; a name that ends in -ms already says it.
        var suffix = Unit == ParameterUnit.Milliseconds && !Name.EndsWith("-ms", StringComparison.Ordinal) ? " ms" : "";
        return $"{Name} {value} is outside {Min}..{Max}{suffix}";
    }
}

/// <summary>
/// One text migration parameter (a QMP str): the TLS settings. The empty string means "not set", as in QEMU.
/// <see cref="Check"/> names a bad value; whether a directory holds usable credentials is checked when a migration
/// starts (the files may be put there after the parameter is set).
/// </summary>
public sealed class MigrationTextParameter(
    string name, string doc, Func<MigrationParameters, string> get, Func<MigrationParameters, string, MigrationParameters> set, string? cliOption = null)
{
    /// <summary>Longer than any path or list of subjects a user means; bounds what a QMP client can make us keep.</summary>
    public const int MaxLength = 4096;

    public string Name { get; } = name;
    public string Doc { get; } = doc;
    public string? CliOption { get; } = cliOption;

    public string Get(MigrationParameters parameters) => get(parameters);

    public MigrationParameters Set(MigrationParameters parameters, string value) => set(parameters, value);

    /// <summary>Null when <paramref name="value"/> is acceptable, else one line naming the parameter.</summary>
    public string? Check(string value)
    {
        if (value.Length > MaxLength)
            return $"{Name} is longer than {MaxLength} characters";
        if (value.Any(char.IsControl))
            return $"{Name} '{value.ReplaceLineEndings(" ")}' contains a control character";
        return null;
    }
}

/// <summary>
/// Every migration parameter (migrate-set-parameters, query-migrate-parameters, `ferry migrate`'s options), in
/// QMP order. QEMU's names where QEMU has the same thing; Ferry-only ones are prefixed `ferry-`. Changing a range
/// or a default is one edit here.
/// </summary>
public static class MigrationParameterTable
{
    public static readonly MigrationParameter MaxBandwidth = new(
        "max-bandwidth", ParameterUnit.BytesPerSecond, 0, long.MaxValue, 0,
        "bytes per second over all channels; 0 = unlimited (QEMU's default is 128 MiB/s)",
        p => p.MaxBandwidth, (p, v) => p with { MaxBandwidth = v }, cliOption: "max-bandwidth");

    public static readonly MigrationParameter DowntimeLimit = new(
        "downtime-limit", ParameterUnit.Milliseconds, 1, 2_000_000, 300,
        "largest acceptable downtime",
        p => p.DowntimeLimitMs, (p, v) => p with { DowntimeLimitMs = v }, cliOption: "downtime-limit");

    public static readonly MigrationParameter MultifdChannels = new(
        "multifd-channels", ParameterUnit.Count, 1, Stream.StreamHeader.MaxChannels, Math.Clamp(Environment.ProcessorCount, 1, 16),
        "parallel channels when the multifd capability is on (Ferry's default: one per core, at most 16)",
        p => p.MultifdChannels, (p, v) => p with { MultifdChannels = checked((int)v) }, cliOption: "channels");

    public static readonly MigrationParameter CpuThrottleInitial = new(
        "cpu-throttle-initial", ParameterUnit.Percent, 1, 99, 20,
        "auto-converge's first throttle",
        p => p.CpuThrottleInitial, (p, v) => p with { CpuThrottleInitial = checked((int)v) });

    public static readonly MigrationParameter CpuThrottleIncrement = new(
        "cpu-throttle-increment", ParameterUnit.Percent, 1, 99, 10,
        "auto-converge's step after each pass that does not converge",
        p => p.CpuThrottleIncrement, (p, v) => p with { CpuThrottleIncrement = checked((int)v) });

    public static readonly MigrationParameter MaxCpuThrottle = new(
        "max-cpu-throttle", ParameterUnit.Percent, 1, 99, 99,
        "auto-converge's highest throttle",
        p => p.MaxCpuThrottle, (p, v) => p with { MaxCpuThrottle = checked((int)v) });

    public static readonly MigrationParameter ThrottleTriggerThreshold = new(
        "throttle-trigger-threshold", ParameterUnit.Percent, 1, 100, 50,
        "percent of a pass's bytes dirtied again during it that counts as not converging",
        p => p.ThrottleTriggerThreshold, (p, v) => p with { ThrottleTriggerThreshold = checked((int)v) });

    public static readonly MigrationParameter HintBudget = new(
        "ferry-hint-budget-ms", ParameterUnit.Milliseconds, 0, 60_000, 500,
        "how long the first pass waits for the guest's free page hint run",
        p => p.HintBudgetMs, (p, v) => p with { HintBudgetMs = checked((int)v) });

    public static readonly MigrationParameter SwitchoverTimeout = new(
        "ferry-switchover-timeout-ms", ParameterUnit.Milliseconds, 100, 600_000, 30_000,
        "how long the source waits for the destination to report the guest running after the last byte",
        p => p.SwitchoverTimeoutMs, (p, v) => p with { SwitchoverTimeoutMs = checked((int)v) });

    public static readonly MigrationParameter ChannelTimeout = new(
        "ferry-channel-timeout-ms", ParameterUnit.Milliseconds, 1000, 600_000, 10_000,
        "how long either side waits on a silent peer (no data, no keepalive) before failing the migration; also the TCP keepalive and user time-out of every channel",
        p => p.ChannelTimeoutMs, (p, v) => p with { ChannelTimeoutMs = checked((int)v) });

    public static readonly MigrationParameter PostcopyAfterPasses = new(
        "ferry-postcopy-after-passes", ParameterUnit.Count, 0, 1000, 0,
        "with capability postcopy-ram: switch to postcopy once this many passes in a row ended with the expected downtime over downtime-limit; 0 = only on migrate-start-postcopy",
        p => p.PostcopyAfterPasses, (p, v) => p with { PostcopyAfterPasses = checked((int)v) }, cliOption: "postcopy-after-passes");

    public static readonly MigrationTextParameter TlsCreds = new(
        "tls-creds",
        "directory of x509 credentials in QEMU's layout (ca-cert.pem, server-cert.pem/-key.pem, client-cert.pem/-key.pem); set: every channel uses TLS 1.3 with both ends authenticated; empty: plain (QEMU names a tls-creds-x509 object here)",
        p => p.TlsCreds, (p, v) => p with { TlsCreds = v }, cliOption: "tls-creds");

    public static readonly MigrationTextParameter TlsHostname = new(
        "tls-hostname",
        "the name the source expects in the destination's certificate (default: the host of the URI)",
        p => p.TlsHostname, (p, v) => p with { TlsHostname = v }, cliOption: "tls-hostname");

    public static readonly MigrationTextParameter TlsAuthz = new(
        "tls-authz",
        "on the destination: the client certificate subjects allowed to connect, separated by ';' (e.g. 'CN=src1,O=Example;CN=src2,O=Example'); empty: any the CA signed (QEMU names an authz object here)",
        p => p.TlsAuthz, (p, v) => p with { TlsAuthz = v }); // a destination's setting: `ferry run --tls-authz`

    public static IReadOnlyList<MigrationParameter> All { get; } =
        [MaxBandwidth, DowntimeLimit, MultifdChannels, CpuThrottleInitial, CpuThrottleIncrement, MaxCpuThrottle, ThrottleTriggerThreshold, HintBudget, SwitchoverTimeout, ChannelTimeout, PostcopyAfterPasses];

    /// <summary>The text parameters (QMP str), after the numbers in QMP order.</summary>
    public static IReadOnlyList<MigrationTextParameter> Texts { get; } = [TlsCreds, TlsHostname, TlsAuthz];

    public static MigrationParameter? Find(string name) => All.FirstOrDefault(p => p.Name == name);

    public static MigrationTextParameter? FindText(string name) => Texts.FirstOrDefault(p => p.Name == name);

    /// <summary>"max-bandwidth, downtime-limit, ..." for an error that lists what is known.</summary>
    public static string Names => string.Join(", ", All.Select(p => p.Name).Concat(Texts.Select(p => p.Name)));
}

/// <summary>One migration capability (migrate-set-capabilities), declared once; <see cref="CliFlag"/> is the `ferry migrate` flag that sets it to the opposite of its default (null: none).</summary>
public sealed class MigrationCapability(
    string name, bool defaultValue, string doc,
    Func<MigrationCapabilities, bool> get, Func<MigrationCapabilities, bool, MigrationCapabilities> set, string? cliFlag = null)
{
    public string Name { get; } = name;
    public bool Default { get; } = defaultValue;
    public string Doc { get; } = doc;
    public string? CliFlag { get; } = cliFlag;

    public bool Get(MigrationCapabilities capabilities) => get(capabilities);

    public MigrationCapabilities Set(MigrationCapabilities capabilities, bool state) => set(capabilities, state);
}

/// <summary>Every migration capability, in QMP order (QEMU names where QEMU has the same thing).</summary>
public static class MigrationCapabilityTable
{
    public static readonly MigrationCapability Multifd = new(
        "multifd", true, "several parallel channels",
        c => c.Multifd, (c, v) => c with { Multifd = v });

    public static readonly MigrationCapability AutoConverge = new(
        "auto-converge", false, "throttle vCPUs while the dirty rate outruns the bandwidth",
        c => c.AutoConverge, (c, v) => c with { AutoConverge = v }, cliFlag: "auto-converge");

    public static readonly MigrationCapability FreePageHint = new(
        "ferry-free-page-hint", true, "skip the pages the balloon's free page hinting reports free",
        c => c.FreePageHint, (c, v) => c with { FreePageHint = v }, cliFlag: "no-hint");

    public static readonly MigrationCapability BalloonSkip = new(
        "ferry-balloon-skip", true, "skip ballooned pages when the guest negotiated MUST_TELL_HOST",
        c => c.BalloonSkip, (c, v) => c with { BalloonSkip = v }, cliFlag: "no-balloon-skip");

    public static readonly MigrationCapability PostcopyRam = new(
        "postcopy-ram", false, "allow switching to postcopy: the guest runs on the destination, which pulls the pages still owed (migrate-start-postcopy, ferry-postcopy-after-passes)",
        c => c.PostcopyRam, (c, v) => c with { PostcopyRam = v }, cliFlag: "postcopy");

    public static readonly MigrationCapability Verify = new(
        "ferry-verify", false, "at the switch-over the destination compares a digest of every 2 MiB chunk of memory with the source's before it resumes the guest; a mismatch fails the migration and the source runs on",
        c => c.Verify, (c, v) => c with { Verify = v }, cliFlag: "verify");

    public static readonly MigrationCapability Events = new(
        "events", false, "emit MIGRATION and MIGRATION_PASS events (ferry migrate turns it on)",
        c => c.Events, (c, v) => c with { Events = v });

    public static readonly MigrationCapability MappedRam = new(
        "mapped-ram", false, "write (migrate) or read (migrate-incoming) a file: URI as the fixed-offset snapshot file",
        c => c.MappedRam, (c, v) => c with { MappedRam = v }, cliFlag: "mapped-ram");

    public static IReadOnlyList<MigrationCapability> All { get; } = [Multifd, AutoConverge, FreePageHint, BalloonSkip, Verify, Events, MappedRam, PostcopyRam];

    public static MigrationCapability? Find(string name) => All.FirstOrDefault(c => c.Name == name);

    public static string Names => string.Join(", ", All.Select(c => c.Name));
}
