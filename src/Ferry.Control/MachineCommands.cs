using System.Text.Json.Nodes;
using Ferry.Machine;

namespace Ferry.Control;

/// <summary>The QMP commands that act on a machine: query-status, stop, cont, quit. Emits STOP/RESUME events.</summary>
public static class MachineCommands
{
    public static void Register(QmpServer server, GuestMachine machine)
    {
        server.Register("query-status", _ =>
        {
            var status = machine.Status;
            return new JsonObject { ["status"] = status.ToQmp(), ["running"] = status == MachineStatus.Running, ["singlestep"] = false };
        });
        server.Register("stop", _ =>
        {
            machine.Pause();
            server.Emit("STOP");
            return null;
        });
        server.Register("cont", _ =>
        {
            machine.Resume();
            server.Emit("RESUME");
            return null;
        });
        server.Register("quit", arguments =>
        {
            // Reply first, then stop: QEMU answers quit before it exits.
            _ = Task.Delay(50).ContinueWith(_ => machine.Stop("quit requested over QMP"), TaskScheduler.Default);
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
        MachineStatus.Shutdown => "shutdown",
        _ => throw new ArgumentOutOfRangeException(nameof(status), status, null),
    };
}
