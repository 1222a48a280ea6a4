using System.Text.Json.Nodes;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;

namespace Ferry.Control;

/// <summary>What the machine commands need of a machine; <see cref="GuestMachine"/> in `ferry run`, a fake in tests without KVM.</summary>
public interface IMachineControl
{
    MachineStatus Status { get; }

    /// <summary>Pauses every vCPU (returns once they are parked).</summary>
    void PauseGuest();

    void ResumeGuest();

    /// <summary>Ends the machine: its run loop returns with <paramref name="cause"/>; <paramref name="detail"/> is for the log.</summary>
    void EndMachine(ShutdownCause cause, string detail);
}

/// <summary>What the migration commands need of a machine, beyond <see cref="IMachineControl"/>; a fake over synthetic memory in tests without KVM.</summary>
public interface IMigratableMachine : IMachineControl
{
    /// <summary>The machine as the source of one migration or snapshot save (one per job).</summary>
    IMigrationSource CreateMigrationSource();

    /// <summary>The machine as the destination of an incoming migration (it was started paused, inmigrate).</summary>
    IMigrationTarget CreateMigrationTarget();

    /// <summary>Loads a snapshot file into the machine (started paused, inmigrate) and runs the guest: migrate-incoming file:.</summary>
    RestoreReport RestoreSnapshot(string path);

    /// <summary>Says why the paused machine is paused (postmigrate after its guest left); false when it is not paused.</summary>
    bool MarkPaused(MachineStatus pausedAs);
}

/// <summary>A <see cref="GuestMachine"/> as the commands see it.</summary>
public sealed class GuestMachineControl(GuestMachine machine) : IMigratableMachine
{
    public MachineStatus Status => machine.Status;

    public void PauseGuest() => machine.Pause();

    public void ResumeGuest() => machine.Resume();

    public void EndMachine(ShutdownCause cause, string detail) => machine.Stop(cause, detail);

    public IMigrationSource CreateMigrationSource() => new MachineMigrationSource(machine);

    public IMigrationTarget CreateMigrationTarget() => new MachineMigrationTarget(machine);

    public RestoreReport RestoreSnapshot(string path) => MachineSnapshots.Restore(machine, path);

    public bool MarkPaused(MachineStatus pausedAs) => machine.MarkPaused(pausedAs);
}

/// <summary>
/// The QMP commands that act on a machine: query-status, stop, cont, quit. Declares and emits STOP/RESUME, and
/// declares SHUTDOWN (emitted through <see cref="EmitShutdown"/> by `ferry run` when the machine ends).
/// </summary>
public static class MachineCommands
{
    private static readonly QmpObjectType StatusInfo = new("StatusInfo",
    [
        new("running", QmpType.Bool),
        new("singlestep", QmpType.Bool),
        new("status", new QmpEnumType("RunState", [.. Enum.GetValues<MachineStatus>().Select(s => s.ToQmp())])),
    ]);

    private static readonly QmpObjectType ShutdownData = new("q_obj_SHUTDOWN-arg",
    [
        new("guest", QmpType.Bool),
        new("reason", new QmpEnumType("ShutdownCause", [.. Enum.GetValues<ShutdownCause>().Select(c => c.ToQmp())])),
    ]);

    /// <summary>
    /// SHUTDOWN for a machine that ended: QEMU's reason, and "guest" true when the guest asked for it (QEMU:
    /// shutdown_caused_by_guest, true for guest-shutdown and guest-panic).
    /// </summary>
    public static void EmitShutdown(QmpServer server, MachineExit exit)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(exit);
        server.Emit("SHUTDOWN", new JsonObject { ["guest"] = exit.Cause.IsGuest(), ["reason"] = exit.Cause.ToQmp() });
    }

    public static void Register(QmpServer server, GuestMachine machine) => Register(server, new GuestMachineControl(machine));

    public static void Register(QmpServer server, IMachineControl machine)
    {
        server.DeclareEvent("STOP");
        server.DeclareEvent("RESUME");
        server.DeclareEvent("SHUTDOWN", ShutdownData);
        server.Register("query-status", StatusInfo, () =>
        {
            var status = machine.Status;
            return new JsonObject { ["status"] = status.ToQmp(), ["running"] = status == MachineStatus.Running, ["singlestep"] = false };
        });
        // A destination waiting for a migration has no guest to run yet: QEMU's cont only asks for the guest to run
        // once it arrived, which Ferry always does, and its stop asks for it not to, which Ferry cannot.
        server.Register("stop", QmpObjectType.Empty, () =>
        {
            if (machine.Status == MachineStatus.InMigrate)
                throw new QmpException(QmpException.GenericError, "Guest is waiting for an incoming migration; it runs once the migration completed, stop it then");
            QmpException.Relay(() => machine.PauseGuest());
            server.Emit("STOP");
            return null;
        });
        server.Register("cont", QmpObjectType.Empty, () =>
        {
            if (machine.Status == MachineStatus.InMigrate)
                return null;
            QmpException.Relay(() => machine.ResumeGuest());
            server.Emit("RESUME");
            return null;
        });
        server.Register("quit", QmpObjectType.Empty, () =>
        {
            // Reply first, then stop: QEMU answers quit before it exits.
            _ = Task.Delay(50).ContinueWith(_ => machine.EndMachine(ShutdownCause.HostQmpQuit, "quit requested over QMP"), TaskScheduler.Default);
            return null;
        });
    }
}

/// <summary>QEMU's spelling of a machine status (query-status's "status", RunState in QEMU's QAPI).</summary>
public static class MachineStatusNames
{
    public static string ToQmp(this MachineStatus status) => status switch
    {
        MachineStatus.Prelaunch => "prelaunch",
        MachineStatus.Running => "running",
        MachineStatus.Paused => "paused",
        MachineStatus.InMigrate => "inmigrate",
        MachineStatus.PostMigrate => "postmigrate",
        MachineStatus.Shutdown => "shutdown",
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, null),
    };
}

/// <summary>QEMU's spelling of a shutdown cause (SHUTDOWN's "reason", ShutdownCause in QEMU's QAPI).</summary>
public static class ShutdownCauseNames
{
    public static string ToQmp(this ShutdownCause cause) => cause switch
    {
        ShutdownCause.HostError => "host-error",
        ShutdownCause.HostQmpQuit => "host-qmp-quit",
        ShutdownCause.HostSignal => "host-signal",
        ShutdownCause.GuestShutdown => "guest-shutdown",
        ShutdownCause.GuestPanic => "guest-panic",
        _ => throw new ArgumentOutOfRangeException(nameof(cause), cause, null),
    };

    /// <summary>SHUTDOWN's "guest": the guest asked for it (QEMU's shutdown_caused_by_guest).</summary>
    public static bool IsGuest(this ShutdownCause cause) => cause is ShutdownCause.GuestShutdown or ShutdownCause.GuestPanic;
}
