using System.Text.Json.Nodes;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Tests.Synthetic;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>
/// A machine for the migration commands without KVM: a source over a <see cref="SyntheticVm"/> (memory with a
/// guest writing throughout), or a destination over a <see cref="SyntheticTarget"/> started paused in inmigrate.
/// Its status follows the synthetic guest as a <see cref="GuestMachine"/>'s follows its vCPUs.
/// </summary>
internal sealed class SyntheticMachine : IMigratableMachine, IDisposable
{
    private readonly object _gate = new();
    private MachineStatus _pausedAs;
    private bool _ended;

    private SyntheticMachine(SyntheticVm? vm, SyntheticTarget? target, MachineStatus pausedAs)
    {
        Vm = vm;
        Target = target;
        _pausedAs = pausedAs;
    }

    public SyntheticVm? Vm { get; }

    public SyntheticTarget? Target { get; }

    public ShutdownCause? EndedWith { get; private set; }

    /// <summary>A running source: two blocks with data, a guest rewriting a working set.</summary>
    public static SyntheticMachine Source()
    {
        var vm = new SyntheticVm(16UL << 20, 4UL << 20);
        vm.Fill(0, 0, 1500, 1);
        vm.Fill(1, 10, 20, 1);
        vm.WorkingSet = (200, 300);
        vm.PagesPerSecond = 10_000;
        vm.Start();
        return new SyntheticMachine(vm, null, MachineStatus.Paused);
    }

    /// <summary>A destination for <paramref name="source"/>: same blocks, empty, paused in inmigrate.</summary>
    public static SyntheticMachine DestinationFor(SyntheticMachine source) =>
        new(null, new SyntheticTarget(source.Vm!.Blocks), MachineStatus.InMigrate);

    public MachineStatus Status
    {
        get
        {
            lock (_gate)
            {
                if (_ended)
                    return MachineStatus.Shutdown;
                var paused = Vm is not null ? Vm.IsPaused : !Target!.Resumed;
                return paused ? _pausedAs : MachineStatus.Running;
            }
        }
    }

    public void PauseGuest()
    {
        lock (_gate)
        {
            if (Vm is null || Vm.IsPaused)
                return;
            Vm.PauseGuest();
            _pausedAs = MachineStatus.Paused;
        }
    }

    public void ResumeGuest() => Vm?.ResumeGuest();

    public void EndMachine(ShutdownCause cause, string detail)
    {
        lock (_gate)
            (_ended, EndedWith) = (true, cause);
    }

    public IMigrationSource CreateMigrationSource() => Vm ?? throw new InvalidOperationException("a destination");

    public IMigrationTarget CreateMigrationTarget() => Target ?? throw new InvalidOperationException("a source");

    public RestoreReport RestoreSnapshot(string path)
    {
        using var file = SnapshotFile.Open(path);
        var loaded = file.LoadInto(Target!.Blocks, 2);
        Target.RestoreState(loaded.State);
        Target.ResumeGuest();
        return new RestoreReport(RestoreMode.Eager, loaded.PagesLoaded, loaded.BytesRead, 0, 0, loaded.State.Count, 0);
    }

    public bool MarkPaused(MachineStatus pausedAs)
    {
        lock (_gate)
        {
            if (Status is MachineStatus.Running or MachineStatus.Shutdown)
                return false;
            _pausedAs = pausedAs;
            return true;
        }
    }

    /// <summary>Every byte of every block equal between a source and a destination that loaded it.</summary>
    public static void AssertSameMemory(SyntheticMachine source, SyntheticMachine destination)
    {
        for (var b = 0; b < source.Vm!.Blocks.Count; b++)
        {
            var size = (int)source.Vm.Blocks[b].Size;
            var from = source.Vm.Blocks[b].Mapping.GetSpan(0, size);
            var to = destination.Target!.Blocks[b].Mapping.GetSpan(0, size);
            if (!from.SequenceEqual(to))
                Assert.Fail($"block {b} differs at page {from.CommonPrefixLength(to) / 4096}");
        }
        Assert.Equal(source.Vm.Generation, BitConverter.ToInt64(destination.Target!.State![0].Blob));
    }

    public void Dispose()
    {
        Vm?.Dispose();
        Target?.Dispose();
    }
}

/// <summary>One side of a migration over QMP: a synthetic machine, its QMP server with what `ferry run` registers, and a client.</summary>
internal sealed class MigrationSide : IDisposable
{
    public MigrationSide(SyntheticMachine machine, bool exitAfterMigration = false)
    {
        Machine = machine;
        SocketPath = Path.Combine(Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
        Server = new QmpServer(SocketPath);
        MachineCommands.Register(Server, machine);
        Migration = new MigrationCommands(machine, exitAfterMigration);
        Migration.Register(Server);
        Server.Start();
        Client = QmpClient.Connect(SocketPath);
    }

    public SyntheticMachine Machine { get; }

    public string SocketPath { get; }

    public QmpServer Server { get; }

    public MigrationCommands Migration { get; }

    public QmpClient Client { get; }

    public string Status => Client.Execute("query-status")!["status"]!.GetValue<string>();

    public void SetCapability(string name, bool state) =>
        Client.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = name, ["state"] = state }) });

    public string Refusal(string command, JsonObject arguments) =>
        Assert.Throws<QmpException>(() => Client.Execute(command, arguments)).Message;

    /// <summary>The statuses of the MIGRATION events received so far, in order.</summary>
    public List<string> MigrationEvents() =>
        [.. Client.Events.Where(e => e["event"]!.GetValue<string>() == "MIGRATION").Select(e => e["data"]!["status"]!.GetValue<string>())];

    /// <summary>Polls query-migrate (which also collects events) until its status is final; returns the last answer.</summary>
    public JsonObject WaitForFinalStatus()
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(60);
        while (true)
        {
            var answer = (JsonObject)Client.Execute("query-migrate")!;
            if (answer["status"]?.GetValue<string>() is "completed" or "failed" or "cancelled")
                return answer;
            Assert.True(DateTime.UtcNow < deadline, $"no final status within 60 s: {answer.ToJsonString()}");
            Thread.Sleep(20);
        }
    }

    /// <summary>Lets events still on their way (emitted right after a status became final) arrive.</summary>
    public void SettleEvents(int expectedMigrationEvents)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while (MigrationEvents().Count < expectedMigrationEvents && DateTime.UtcNow < deadline)
        {
            Client.Execute("query-version");
            Thread.Sleep(20);
        }
        Thread.Sleep(100);
        Client.Execute("query-version");
    }

    public void Dispose()
    {
        Client.Dispose();
        Server.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Migration.Incoming.Dispose();
        Machine.Dispose();
    }
}
