using System.Text.Json.Serialization;

namespace Ferry.Control;

// The typed arguments of the QMP commands that take any, one record per command. A property is a member (its
// kebab-case name); `required` makes it mandatory; its C# type is its QMP type (QmpObjectType.From). The record is
// both what the handler receives and what query-qmp-schema shows, so the two cannot disagree. Commands whose
// members come from a table (migrate-set-parameters, migrate-set-capabilities) build their type from the table.

/// <summary>migrate: QEMU's members; blk, inc and resume are accepted so QEMU's callers work, but only as false.</summary>
public sealed record MigrateArguments
{
    public required string Uri { get; init; }
    /// <summary>Ignored, as by QEMU (migration always runs in the background).</summary>
    public bool? Detach { get; init; }
    public bool? Blk { get; init; }
    public bool? Inc { get; init; }
    public bool? Resume { get; init; }
}

/// <summary>
/// migrate-incoming: QEMU's uri (its "channels" alternative is not offered) and QEMU 9.1's exit-on-error (default
/// true: a failed incoming migration ends the destination; false: it stays up, its failure in query-migrate).
/// </summary>
public sealed record MigrateIncomingArguments
{
    public required string Uri { get; init; }
    public bool? ExitOnError { get; init; }
}

/// <summary>ferry-snapshot-save.</summary>
public sealed record SnapshotSaveArguments
{
    public required string File { get; init; }
    public bool? Paused { get; init; }
}

/// <summary>balloon: the guest's target memory size in bytes, as QEMU's.</summary>
public sealed record BalloonArguments
{
    public required long Value { get; init; }
}

/// <summary>ferry-free-page-bitmap.</summary>
public sealed record FreePageBitmapArguments
{
    public bool? DropCaches { get; init; }
}

/// <summary>human-monitor-command; cpu-index is accepted and ignored (no HMP command Ferry has depends on a CPU).</summary>
public sealed record HumanMonitorCommandArguments
{
    public required string CommandLine { get; init; }
    public long? CpuIndex { get; init; }
}

/// <summary>Source-generated binding for the records above (no reflection; Ferry is AOT-compatible).</summary>
[JsonSourceGenerationOptions(
    PropertyNamingPolicy = JsonKnownNamingPolicy.KebabCaseLower,
    UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow,
    NumberHandling = JsonNumberHandling.Strict)]
[JsonSerializable(typeof(MigrateArguments))]
[JsonSerializable(typeof(MigrateIncomingArguments))]
[JsonSerializable(typeof(SnapshotSaveArguments))]
[JsonSerializable(typeof(BalloonArguments))]
[JsonSerializable(typeof(FreePageBitmapArguments))]
[JsonSerializable(typeof(HumanMonitorCommandArguments))]
public sealed partial class QmpArgumentsContext : JsonSerializerContext;
