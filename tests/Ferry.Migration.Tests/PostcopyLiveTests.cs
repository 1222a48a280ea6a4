using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// Postcopy with real guests between two machines in this process: the destination machine's memory is demand-paged
/// by the memory layer's userfaultfd pager (<see cref="MachineMigrationTarget.Postcopy"/>), and its vCPUs block
/// inside KVM_RUN on owed pages. They need KVM. Without KVM the engine is covered by <see cref="PostcopyEngineTests"/>
/// and the same engine into real demand-paged memory by <see cref="UserfaultPostcopyTests"/>.
/// </summary>
public sealed class PostcopyLiveTests
{
    private static readonly MigrationCapabilities Postcopy = new() { PostcopyRam = true };

    /// <summary>A destination machine like <paramref name="source"/>'s, parked, receiving on <paramref name="listener"/>.</summary>
    private static (BootedGuest Destination, Task<IncomingReport> Receiving) Destination(BootedGuest source, IChannelListener listener, PostcopyIncoming incoming)
    {
        var console = new GuestConsole();
        var machine = GuestMachine.Create(source.Machine.Config, console, source.Machine.Loggers);
        machine.Start(paused: true);
        var receiving = Task.Run(() => MigrationReceiver.Receive(new MachineMigrationTarget(machine), listener, CancellationToken.None, postcopy: incoming));
        return (BootedGuest.Adopt(machine, console), receiving);
    }

    [KvmTheory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_guest_dirtying_faster_than_the_bandwidth_completes_with_postcopy_and_verifies(int cpus)
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 512, cpus: cpus);
        await source.Cmd("fill 64");
        await source.Cmd("dirty 100 64"); // far more than 32 MiB/s
        await Task.Delay(100);
        var parameters = new MigrationParameters { MultifdChannels = 2, MaxBandwidth = 32 << 20, DowntimeLimitMs = 50, PostcopyAfterPasses = 2 };

        var console = new GuestConsole();
        var (machine, stats, report) = LoopbackMigration.Run(source.Machine, console, parameters, Postcopy);
        using var destination = BootedGuest.Adopt(machine, console);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.NotNull(stats.Postcopy);
        Assert.True(stats.Postcopy.OwedPages > 0);
        Assert.NotNull(report.Postcopy);
        var verify = await destination.Cmd("verify");
        Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
    }

    [KvmFact]
    public async Task Cutting_postcopy_at_random_points_then_recovering_keeps_the_guest_20_times()
    {
        var random = new Random(14);
        for (var round = 0; round < 20; round++)
        {
            using var source = await BootedGuest.StartAsync(memoryMib: 256);
            await source.Cmd("fill 32");
            await source.Cmd("dirty 100 32");
            var channels = new InMemoryChannels();
            var incoming = new PostcopyIncoming();
            var (destination, receiving) = Destination(source, channels, incoming);
            using (destination)
            {
                using var migration = new PrecopyMigration(new MachineMigrationSource(source.Machine),
                    new MigrationParameters { MultifdChannels = 2, MaxBandwidth = 16 << 20, DowntimeLimitMs = 1, PostcopyAfterPasses = 1 }, Postcopy);
                var running = Task.Run(() => migration.Run(channels));
                while (incoming.Status != MigrationStatus.PostcopyActive && !running.IsCompleted)
                    await Task.Delay(1);
                await Task.Delay(random.Next(0, 300));
                channels.BreakAll();
                while (!running.IsCompleted && (migration.Status != MigrationStatus.PostcopyPaused || incoming.Status != MigrationStatus.PostcopyPaused))
                    await Task.Delay(5);
                if (!running.IsCompleted)
                {
                    var again = new InMemoryChannels();
                    incoming.Recover(again);
                    migration.ResumePostcopy(again);
                }
                Assert.Equal(MigrationStatus.Completed, (await running).Status);
                await receiving;
                var verify = await destination.Cmd("verify");
                Assert.True(verify.GetProperty("passed").GetBoolean(), $"round {round}: {verify}");
            }
        }
    }
}
