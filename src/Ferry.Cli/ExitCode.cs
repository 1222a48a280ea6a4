using Ferry.Machine;

namespace Ferry.Cli;

/// <summary>
/// Every exit code `ferry` returns, in one table (README "Exit codes" lists the same). A code means the same for
/// every command.
/// </summary>
public enum ExitCode
{
    /// <summary>Done: the command did what it was asked; `run`: the guest powered off, or QMP quit, a signal or --exit-after-migration stopped it.</summary>
    Ok = 0,

    /// <summary>A runtime failure: no KVM, a guest image that cannot be used, a QMP socket that does not answer, a migration or snapshot save that failed.</summary>
    Failure = 1,

    /// <summary>A usage error: an unknown command or option, a missing or bad value (sizes, counts, paths, URIs); nothing was started.</summary>
    Usage = 2,

    /// <summary>`run`: the guest panicked.</summary>
    GuestPanic = 3,

    /// <summary>`run`: a vCPU stopped on a fault (the message carries a register dump naming RIP); SHUTDOWN's reason is host-error.</summary>
    VcpuFault = 4,

    /// <summary>`run --incoming` or `run --restore`: the migration or the snapshot could not be loaded (with --lazy also later, while the guest ran: a page could not be brought in).</summary>
    LoadFailed = 5,

    /// <summary>`migrate`, `snapshot save`: cancelled (Ctrl-C or QMP migrate_cancel); the source VM runs on.</summary>
    Cancelled = 6,
}

internal static class ExitCodes
{
    /// <summary>How `ferry run` ends for each way a machine stops.</summary>
    public static ExitCode For(MachineExit exit) => exit switch
    {
        { Cause: ShutdownCause.GuestPanic } => ExitCode.GuestPanic,
        { Fault: HostFault.Memory } => ExitCode.LoadFailed,
        { Cause: ShutdownCause.HostError } => ExitCode.VcpuFault,
        _ => ExitCode.Ok,
    };

    /// <summary>
    /// How `migrate` and `snapshot save` end for a job's final status and query-migrate's "ferry-error-kind":
    /// cancelled is <see cref="ExitCode.Cancelled"/>, every other failure kind <see cref="ExitCode.Failure"/>.
    /// </summary>
    public static ExitCode ForMigration(string? status, string? errorKind) => status switch
    {
        "completed" => ExitCode.Ok,
        "cancelled" => ExitCode.Cancelled,
        _ when errorKind == "cancelled" => ExitCode.Cancelled,
        _ => ExitCode.Failure,
    };
}
