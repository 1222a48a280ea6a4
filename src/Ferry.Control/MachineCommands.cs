using System.Text.Json.Nodes;
using Ferry.Machine;

namespace Ferry.Control;

/// <summary>What the machine commands need of a machine; <see cref="GuestMachine"/> in `ferry run`, a fake in tests without KVM.</summary>
public interface IMachineControl
{
    MachineStatus Status { get; }

    /// <summary>Pauses every vCPU (returns once they are parked).</summary>
    void PauseGuest();

    void ResumeGuest();

    /// <summary>Ends the machine: its run loop returns with <paramref name="reason"/>.</summary>
    void EndMachine(string reason);
}

/// <summary>
/// The QMP commands that act on a machine: query-status, stop, cont, quit. Declares and emits STOP/RESUME, and
/// declares SHUTDOWN (emitted by `ferry run` when the machine ends).
/// </summary>
public static class MachineCommands
{
    private static readonly QmpObjectType StatusInfo = new("StatusInfo",
    [
        new("running", QmpType.Bool),
        new("singlestep", QmpType.Bool),
        new("status", new QmpEnumType("RunState", [.. Enum.GetValues<MachineStatus>().Select(s => s.ToQmp())])),
    ]);

    private static readonly QmpObjectType ShutdownData = new("q_obj_SHUTDOWN-arg", [new("guest", QmpType.Bool), new("reason", QmpType.Str)]);

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
        server.Register("stop", QmpObjectType.Empty, () =>
        {
            QmpException.Relay(() => machine.PauseGuest());
            server.Emit("STOP");
            return null;
        });
        server.Register("cont", QmpObjectType.Empty, () =>
        {
            QmpException.Relay(() => machine.ResumeGuest());
            server.Emit("RESUME");
            return null;
        });
        server.Register("quit", QmpObjectType.Empty, () =>
        {
            // Reply first, then stop: QEMU answers quit before it exits.
            _ = Task.Delay(50).ContinueWith(_ => machine.EndMachine("quit requested over QMP"), TaskScheduler.Default);
            return null;
        });
    }

    private sealed class GuestMachineControl(GuestMachine machine) : IMachineControl
    {
        public MachineStatus Status => machine.Status;

        public void PauseGuest() => machine.Pause();

        public void ResumeGuest() => machine.Resume();

        public void EndMachine(string reason) => machine.Stop(reason);
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
        MachineStatus.Shutdown => "shutdown",
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, null),
    };
}
