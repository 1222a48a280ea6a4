using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>Real guests migrated live between two machines in this process, over loopback TCP.</summary>
public sealed class LiveMigrationTests
{
    /// <summary>
    /// Migrates <paramref name="source"/> to a new machine; the source is stopped once the guest runs there. Verified
    /// (ferry-verify) unless the capabilities say otherwise: the destination compared every chunk with the source's.
    /// </summary>
    internal static (BootedGuest Destination, MigrationStats Stats, IncomingReport Report) LiveMigrate(
        BootedGuest source, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null)
    {
        var console = new GuestConsole();
        capabilities ??= new MigrationCapabilities { Verify = true };
        var (destination, stats, report) = LoopbackMigration.Run(source.Machine, console, parameters, capabilities);
        if (capabilities.Verify)
        {
            Assert.True(stats.VerifiedChunks > 0, "no chunk was verified");
            Assert.True(report.VerifiedChunks >= stats.VerifiedChunks, $"{report.VerifiedChunks} chunks compared of {stats.VerifiedChunks} sent");
        }
        return (BootedGuest.Adopt(destination, console), stats, report);
    }

    [KvmTheory]
    [InlineData(1)]
    [InlineData(2)]
    public async Task A_guest_dirtying_memory_survives_three_round_trips(int cpus)
    {
        var guest = await BootedGuest.StartAsync(memoryMib: 256, cpus: cpus);
        try
        {
            await guest.Cmd("fill 32");
            await guest.Cmd("dirty 50 16");
            await Task.Delay(100);
            for (var trip = 0; trip < 6; trip++) // there and back, three times
            {
                var (next, stats, _) = LiveMigrate(guest, new MigrationParameters { MultifdChannels = 2 });
                guest.Dispose();
                guest = next;
                Assert.Equal(MigrationStatus.Completed, stats.Status);
                Assert.True(stats.DowntimeMs < 5000, $"downtime {stats.DowntimeMs} ms");
                // Nowhere near the whole 256 MiB travels: only what the guest touched.
                Assert.True(stats.NormalPages < 120 * 256, $"{stats.NormalPages} pages sent");
                var running = await guest.Cmd("stats");
                Assert.True(running.GetProperty("dirty_running").GetBoolean(), running.ToString());
                var verify = await guest.Cmd("verify");
                Assert.True(verify.GetProperty("passed").GetBoolean(), $"trip {trip}: {verify}");
            }
            var stop = await guest.Cmd("stop");
            Assert.True(stop.GetProperty("pages_dirtied").GetUInt64() > 0);
            var final = await guest.Cmd("verify");
            Assert.True(final.GetProperty("passed").GetBoolean(), final.ToString());
            Assert.True(final.GetProperty("pages_checked").GetUInt64() >= (32 + 16) * 256);
        }
        finally
        {
            guest.Dispose();
        }
    }

    [KvmFact]
    public async Task A_never_touched_guest_sends_almost_nothing()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 1024, commandLine: "report_delay_ms=600000");
        var (destination, stats, _) = LiveMigrate(source);
        using (destination)
        {
            var total = 1024L * 256;
            Assert.True(stats.UntouchedPages > total * 95 / 100, $"{stats.UntouchedPages} of {total} pages untouched");
            Assert.True(stats.NormalPages + stats.ZeroPages < total * 5 / 100);
            Assert.True((await destination.Cmd("verify")).GetProperty("passed").GetBoolean());
        }
    }

    [KvmFact]
    public async Task A_guest_ballooned_to_ten_percent_sends_none_of_its_balloon()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 1024, commandLine: "report_delay_ms=600000");
        var balloon = source.Machine.Balloon!;
        while (!balloon.DriverReady)
            await Task.Delay(10);
        await source.Cmd("fill 64");
        var target = 1024u * 256 * 9 / 10;
        balloon.SetTargetPages(target);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (balloon.ActualPages != target && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        Assert.Equal(target, balloon.ActualPages);

        var (destination, stats, report) = LiveMigrate(source);
        using (destination)
        {
            Assert.Equal(BalloonSkipReason.On, stats.BalloonSkip);
            Assert.Equal((long)target, stats.BalloonedPages);
            Assert.Equal((ulong)target, report.BalloonedPages);
            Assert.True(stats.NormalPages < 90 * 256, $"{stats.NormalPages} pages sent");
            Assert.Equal(target, destination.Machine.Balloon!.ActualPages);
            Assert.True((await destination.Cmd("verify")).GetProperty("passed").GetBoolean());
        }
    }

    [KvmTheory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task Memory_filled_then_freed_is_skipped_only_with_hinting(bool hint)
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 1024, commandLine: "report_delay_ms=600000");
        var balloon = source.Machine.Balloon!;
        while (!balloon.DriverReady)
            await Task.Delay(10);
        var usable = source.Ready.GetProperty("usable_bytes").GetUInt64() >> 20;
        var filled = usable * 6 / 10;
        await source.Cmd($"fill {filled}");
        await source.Cmd("free");

        var (destination, stats, _) = LiveMigrate(source, capabilities: new MigrationCapabilities { FreePageHint = hint, Verify = true });
        using (destination)
        {
            var filledPages = (long)filled * 256;
            if (hint)
            {
                Assert.Equal(FreePageHintReason.On, stats.FreePageHint);
                Assert.True(stats.HintedPages > filledPages * 9 / 10, $"{stats.HintedPages} hinted of {filledPages} freed");
                Assert.True(stats.NormalPages < filledPages / 10, $"{stats.NormalPages} pages sent");
            }
            else
            {
                Assert.Equal(FreePageHintReason.CapabilityOff, stats.FreePageHint);
                Assert.Equal(0, stats.HintedPages);
                Assert.True(stats.NormalPages >= filledPages, $"{stats.NormalPages} pages sent");
            }
            Assert.True((await destination.Cmd("verify")).GetProperty("passed").GetBoolean());
            await destination.Cmd($"fill {filled}");
            Assert.True((await destination.Cmd("verify")).GetProperty("passed").GetBoolean());
        }
    }

    [KvmFact]
    public async Task A_cancelled_migration_leaves_the_guest_running_on_the_source()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 512);
        await source.Cmd("fill 256");
        await source.Cmd("dirty 20 8");
        var console = new GuestConsole();
        using var destination = GuestMachine.Create(source.Machine.Config, console);
        destination.Start(paused: true);
        using var listener = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        var receive = Task.Run(() => MigrationReceiver.Receive(new MachineMigrationTarget(destination), listener, CancellationToken.None));
        using var migration = new PrecopyMigration(new MachineMigrationSource(source.Machine), new MigrationParameters { MaxBandwidth = 32 << 20 }, new MigrationCapabilities());
        var run = Task.Run(() => migration.Run(new TcpChannelConnector(listener.Uri)));
        await Task.Delay(500);
        migration.Cancel();
        Assert.Equal("migration cancelled", (await Assert.ThrowsAsync<MigrationException>(() => run)).Message);
        await Assert.ThrowsAsync<MigrationException>(() => receive);
        Assert.Equal(MachineStatus.Running, source.Machine.Status);
        Assert.False(source.Machine.Vm.DirtyLoggingEnabled);
        Assert.True((await source.Cmd("verify")).GetProperty("passed").GetBoolean());
        Assert.Equal(MachineStatus.Paused, destination.Status);
    }
}
