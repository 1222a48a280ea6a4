using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>What query-migrate shows while a migration runs and where its setup went. No KVM needed.</summary>
public sealed class MigrationProgressTests
{
    private const ulong MiB = 1UL << 20;

    [Fact]
    public void Setup_time_is_split_into_phases_that_add_up()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 1000, 1);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = PrecopyEngineTests.Migrate(vm, target);

        var setup = stats.Setup!;
        double[] parts = [setup.OpenMs, setup.PrepareStateMs, setup.DirtyLoggingMs, setup.ExtentsMs, setup.BalloonMs, setup.HintWaitMs];
        Assert.All(parts, ms => Assert.True(ms >= 0));
        Assert.True(Math.Abs(parts.Sum() - stats.SetupTimeMs) <= 0.5 + stats.SetupTimeMs * 0.01, $"phases {parts.Sum()} ms, setup {stats.SetupTimeMs} ms");
    }

    [Fact]
    public void Bytes_split_into_precopy_and_downtime_and_pages_per_second_is_the_last_pass_rate()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 1000, 1);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = PrecopyEngineTests.Migrate(vm, target);

        var live = stats.Passes.Take(stats.Passes.Count - 1).Sum(p => p.Bytes);
        Assert.Equal(live, stats.PrecopyBytes);
        Assert.Equal(stats.TransferredBytes, stats.PrecopyBytes + stats.DowntimeBytes);
        Assert.True(stats.PrecopyBytes >= 1000L * Page.Size, $"{stats.PrecopyBytes} precopy bytes for 1000 pages");
        Assert.True(stats.DowntimeBytes > 0, "the state travels in the downtime");
        var last = stats.Passes[^1];
        Assert.Equal((last.NormalPages + last.ZeroPages) / (last.DurationMs / 1000), stats.PagesPerSecond, 6);
    }

    [Fact]
    public void Remaining_counts_down_during_the_first_pass()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 8192, 1); // 32 MiB at 16 MiB/s: two seconds of pass 1
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MaxBandwidth = 16 << 20, MultifdChannels = 2 }, new MigrationCapabilities());
        var passesDone = 0;
        migration.PassCompleted += _ => Interlocked.Increment(ref passesDone);
        var run = Task.Run(() => migration.Run(channels));

        var deadline = DateTime.UtcNow.AddSeconds(30);
        var seen = new List<long>();
        while (DateTime.UtcNow < deadline && !run.IsCompleted && Volatile.Read(ref passesDone) == 0)
        {
            var stats = migration.Snapshot();
            if (stats.Status == MigrationStatus.Active && Volatile.Read(ref passesDone) == 0)
                seen.Add(stats.RemainingBytes);
            Thread.Sleep(100);
        }
        run.GetAwaiter().GetResult();
        receive.GetAwaiter().GetResult();

        Assert.True(seen.Count >= 3, $"{seen.Count} samples during pass 1");
        Assert.All(seen, r => Assert.InRange(r, 0L, 8192L * Page.Size));
        Assert.True(seen[0] > seen[^1], $"remaining went from {seen[0]} to {seen[^1]} during pass 1");
        Assert.True(seen[0] > 0);
    }
}
