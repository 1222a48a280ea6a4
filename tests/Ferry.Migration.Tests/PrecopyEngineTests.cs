using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// The precopy engine end to end without KVM: synthetic memory and guest, in-memory channels, the real receiver.
/// </summary>
public sealed class PrecopyEngineTests
{
    private const ulong MiB = 1UL << 20;

    internal static (MigrationStats Stats, IncomingReport Report) Migrate(
        SyntheticVm vm, SyntheticTarget target, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null, InMemoryChannels? channels = null)
    {
        channels ??= new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, parameters ?? new MigrationParameters { MultifdChannels = 3 }, capabilities ?? new MigrationCapabilities());
        MigrationStats stats;
        try
        {
            stats = migration.Run(channels);
        }
        catch (MigrationException e) when (receive.IsFaulted)
        {
            throw new MigrationException($"{e.Message} (destination: {receive.Exception!.InnerException!.Message})", e);
        }
        return (stats, receive.GetAwaiter().GetResult());
    }

    /// <summary>Every byte of every block equal on both sides (reads holes, so check allocation before calling).</summary>
    internal static void AssertSameMemory(SyntheticVm vm, SyntheticTarget target)
    {
        for (var b = 0; b < vm.Blocks.Count; b++)
        {
            var size = (int)vm.Blocks[b].Size;
            var source = vm.Blocks[b].Mapping.GetSpan(0, size);
            var destination = target.Blocks[b].Mapping.GetSpan(0, size);
            if (!source.SequenceEqual(destination))
            {
                var at = source.CommonPrefixLength(destination);
                Assert.Fail($"block {b} differs at page {at / 4096} (offset 0x{at:X})");
            }
        }
    }

    [Fact]
    public void Idle_memory_arrives_whole_with_every_page_class_counted()
    {
        using var vm = new SyntheticVm(64 * MiB, 32 * MiB);
        vm.Fill(0, 100, 300, 1);
        vm.Blocks[0].Mapping.GetSpan(2000 * 4096, 50 * 4096).Clear(); // touched, but zero
        vm.Fill(1, 7, 10, 2);
        using var target = new SyntheticTarget(vm.Blocks);
        var allocatedBefore = vm.Blocks[0].AllocatedBytes();

        var (stats, report) = Migrate(vm, target);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(allocatedBefore, vm.Blocks[0].AllocatedBytes()); // never-touched pages were never read
        Assert.Equal(310, stats.NormalPages);
        Assert.Equal(50, stats.ZeroPages);
        Assert.Equal((long)((96 * MiB) / 4096) - 360, stats.UntouchedPages);
        Assert.Equal(3, stats.Channels);
        Assert.Equal(310UL, report.DataPages);
        Assert.True(stats.TransferredBytes < 310 * 4096 + 64 * 1024, $"{stats.TransferredBytes} bytes for 310 pages");
        Assert.True(stats.DowntimeMs >= 0);
        // The destination allocated only the data pages: zero runs became holes.
        Assert.InRange(target.Blocks[0].AllocatedBytes(), 300UL * 4096, 300UL * 4096 + MiB);
        Assert.True(target.Resumed);
        AssertSameMemory(vm, target);
    }

    [Theory]
    [InlineData(RamBackend.Memfd)]
    [InlineData(RamBackend.Anonymous)]
    public void A_guest_writing_throughout_arrives_as_it_was_when_paused(RamBackend backend)
    {
        using var vm = new SyntheticVm(backend, 64 * MiB);
        vm.Fill(0, 0, 8192, 1);
        vm.WorkingSet = (1000, 2000);
        vm.PagesPerSecond = 50_000;
        vm.Start();
        Thread.Sleep(50);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target, new MigrationParameters { MultifdChannels = 4, MaxBandwidth = (long)(256 * MiB) });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(vm.IsPaused);
        Assert.True(stats.DirtySyncCount >= 2, $"{stats.DirtySyncCount} syncs");
        Assert.True(stats.Passes.Count >= 2);
        Assert.Equal(vm.Generation, BitConverter.ToInt64(target.State![0].Blob));
        AssertSameMemory(vm, target);
        // The downtime's phases account for all of it (a migration never resumes the source).
        var phases = stats.Downtime!;
        double[] parts = [phases.PauseMs, phases.SyncMs, phases.FinalPassMs, phases.SaveStateMs, phases.CompleteMs, phases.ResumeMs];
        Assert.All(parts, ms => Assert.True(ms >= 0));
        Assert.Equal(stats.DowntimeMs!.Value, parts.Sum(), 0.001); // a tolerance: rounding both to 3 decimals can split a .0005 tie
        Assert.True(phases.ResumeMs < 1, $"resume phase {phases.ResumeMs} ms in a migration");
    }

    [Fact]
    public void A_page_that_became_zero_after_it_was_sent_ends_as_a_hole_on_the_destination()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2 }, new MigrationCapabilities());
        migration.PassCompleted += pass =>
        {
            if (pass.Pass != 1)
                return;
            // After pass 1 sent it, the guest zeroes page 5 and rewrites page 6.
            vm.Blocks[0].Mapping.GetSpan(5 * 4096, 4096).Clear();
            vm.Fill(0, 6, 1, 2);
            vm.Blocks[0].VmmDirty.Add(5);
        };

        var stats = migration.Run(channels);
        receive.GetAwaiter().GetResult();

        Assert.Equal(101, stats.NormalPages);
        Assert.Equal(1, stats.ZeroPages);
        Assert.InRange(target.Blocks[0].AllocatedBytes(), 99UL * 4096, 99UL * 4096 + MiB);
        AssertSameMemory(vm, target);
    }

    [Fact]
    public void Pages_in_a_trusted_balloon_are_never_sent_and_the_bitmap_arrives()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 1000, 1);
        var balloon = new SyntheticBalloon(vm) { FreeRanges = [] };
        vm.SyntheticBalloon = balloon;
        balloon.Inflate(0, 200, 200);                  // holes now
        balloon.Bitmap(0).AddRange(600, 100); // in the balloon, host copy not yet dropped
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, report) = Migrate(vm, target);

        Assert.Equal(BalloonSkipReason.On, stats.BalloonSkip);
        Assert.Equal(700, stats.NormalPages);
        Assert.Equal(300, stats.BalloonedPages);
        Assert.Equal(0, stats.BalloonedPagesSent);
        Assert.Equal(300UL, report.BalloonedPages);
        Assert.True(balloon.Bitmap(0).Words.SequenceEqual(target.BalloonBitmaps[0].Words));
    }

    [Fact]
    public void An_untrusted_balloon_is_sent_as_ordinary_pages_and_the_statistics_say_why()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 1000, 1);
        var balloon = new SyntheticBalloon(vm) { MustTellHost = false, FreeRanges = [] };
        vm.SyntheticBalloon = balloon;
        balloon.Bitmap(0).AddRange(600, 100);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target);

        Assert.Equal(BalloonSkipReason.NoMustTellHost, stats.BalloonSkip);
        Assert.Equal(1000, stats.NormalPages);
        Assert.Equal(0, stats.BalloonedPages);
        Assert.Equal(100, stats.BalloonedPagesSent);
        AssertSameMemory(vm, target);
    }

    [Fact]
    public void A_running_guest_with_pages_dirty_after_pass_1_gets_a_second_live_pass_an_idle_one_does_not()
    {
        using (var idle = new SyntheticVm(16 * MiB))
        {
            idle.Fill(0, 0, 100, 1);
            idle.Start();
            using var target = new SyntheticTarget(idle.Blocks);
            var (stats, _) = Migrate(idle, target);
            Assert.Equal(2, stats.Passes.Count); // pass 1, then the final pass: nothing was dirty
        }
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        vm.Start();
        // Three pages written just before the sync that ends pass 1, and nothing after: far under the downtime limit.
        var syncs = 0;
        vm.Syncing += _ =>
        {
            if (Interlocked.Increment(ref syncs) == 1)
                vm.Fill(0, 5, 3, 2);
        };
        using var vmTarget = new SyntheticTarget(vm.Blocks);

        var (written, _) = Migrate(vm, vmTarget);

        Assert.True(written.Passes[0].ExpectedDowntimeMs < 300);
        Assert.Equal(3, written.Passes.Count);
        Assert.Equal(3, written.Passes[1].NormalPages); // the second, live pass took them
        Assert.Equal(0, written.Passes[2].NormalPages); // so the paused one had nothing left
        AssertSameMemory(vm, vmTarget);
    }

    [Fact]
    public void The_guest_is_paused_only_after_the_destination_has_loaded_every_live_pass()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 8192, 1);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var loadedAtPause = false;
        vm.Pausing += () =>
            loadedAtPause = vm.Blocks[0].Mapping.GetSpan(0, 8192 * 4096).SequenceEqual(target.Blocks[0].Mapping.GetSpan(0, 8192 * 4096));

        var (stats, _) = Migrate(vm, target, new MigrationParameters { MultifdChannels = 2 });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(loadedAtPause, "pass 1 was still being loaded when the guest paused (its backlog became downtime)");
        AssertSameMemory(vm, target);
    }

    [Fact]
    public void Hinted_free_pages_are_not_sent_but_a_page_reused_after_its_hint_is()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 2000, 1);
        // The guest reuses ten of the hinted pages while the migration runs; later hint runs no longer report them.
        vm.SyntheticBalloon = new SyntheticBalloon(vm) { FreeRanges = [(0, 500, 1000)], LaterFreeRanges = [(0, 510, 990)] };
        vm.WorkingSet = (500, 10);
        vm.PagesPerSecond = 2000;
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target);

        Assert.Equal(FreePageHintReason.On, stats.FreePageHint);
        Assert.InRange(stats.HintedPages, 990, 1000);
        Assert.InRange(stats.NormalPages, 1000, 1200);
        var src = vm.Blocks[0].Mapping;
        var dst = target.Blocks[0].Mapping;
        // Not hinted: equal. Reused after the hint: equal (the dirty log caught them). Hinted and left free: not sent.
        Assert.True(src.GetSpan(0, 500 * 4096).SequenceEqual(dst.GetSpan(0, 500 * 4096)));
        Assert.True(src.GetSpan(500 * 4096, 10 * 4096).SequenceEqual(dst.GetSpan(500 * 4096, 10 * 4096)));
        Assert.True(src.GetSpan(1500 * 4096, 500 * 4096).SequenceEqual(dst.GetSpan(1500 * 4096, 500 * 4096)));
        Assert.True(dst.GetSpan(600 * 4096, 800 * 4096).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(vm.SyntheticBalloon.RunsStopped >= 1);
        Assert.True(vm.SyntheticBalloon.RunsFinished >= 1);
    }

    [Fact]
    public void A_guest_that_never_answers_a_hint_costs_only_the_budget()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        vm.SyntheticBalloon = new SyntheticBalloon(vm) { FreeRanges = null };
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target, new MigrationParameters { HintBudgetMs = 200, MultifdChannels = 2 });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(0, stats.HintedPages);
        Assert.InRange(stats.SetupTimeMs, 190, 10_000);
        Assert.Equal(100, stats.NormalPages);
    }

    [Fact]
    public void A_guest_that_poisons_free_pages_gets_no_hint_run()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        vm.SyntheticBalloon = new SyntheticBalloon(vm) { FreeRanges = [(0, 0, 100)], PoisonValue = 0xAAAAAAAA };
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target);

        Assert.Equal(FreePageHintReason.GuestPoisons, stats.FreePageHint);
        Assert.Equal(0, vm.SyntheticBalloon.RunsStarted);
        Assert.Equal(100, stats.NormalPages);
        AssertSameMemory(vm, target);
    }

    [Fact]
    public void The_bandwidth_limit_holds_over_all_channels()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 2048, 1); // 8 MiB
        using var target = new SyntheticTarget(vm.Blocks);
        const long limit = 16 << 20;

        var (stats, _) = Migrate(vm, target, new MigrationParameters { MaxBandwidth = limit, MultifdChannels = 4 });

        var sendMs = stats.Passes.Sum(p => p.DurationMs);
        var rate = stats.TransferredBytes / (sendMs / 1000);
        Assert.True(rate <= limit * 1.25, $"{rate / MiB:F1} MiB/s against a {limit / MiB} MiB/s limit");
        AssertSameMemory(vm, target);
    }

    [Fact]
    public void Without_auto_converge_a_fast_writer_keeps_the_migration_iterating_and_it_says_why()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 512, 1);
        vm.WorkingSet = (0, 512);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MaxBandwidth = 8 << 20, DowntimeLimitMs = 50, MultifdChannels = 2 }, new MigrationCapabilities());
        var run = Task.Run(() => migration.Run(channels));

        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (migration.Snapshot().Passes.Count < 3 && DateTime.UtcNow < deadline && !run.IsCompleted)
            Thread.Sleep(20);
        var stats = migration.Snapshot();
        Assert.Equal(MigrationStatus.Active, stats.Status);
        Assert.True(stats.Passes.Count >= 3, $"{stats.Passes.Count} passes");
        Assert.Equal(AutoConvergeStep.Off, stats.NotConverging!.AutoConverge);
        Assert.Equal((NotConvergingReason.OverDowntimeLimit, 50L), (stats.NotConverging.Reason, stats.NotConverging.DowntimeLimitMs));

        migration.Cancel();
        var error = Assert.Throws<MigrationException>(() => run.GetAwaiter().GetResult());
        Assert.Equal("migration cancelled", error.Message);
        Assert.Equal(MigrationErrorKind.Cancelled, error.Kind);
        Assert.Equal(MigrationStatus.Cancelled, migration.Status);
        Assert.False(vm.IsPaused);
        Assert.False(vm.DirtyLogging);
        Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
        Assert.False(target.Resumed);
    }

    [Fact]
    public void With_auto_converge_the_vcpus_are_throttled_until_it_converges()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 512, 1);
        vm.WorkingSet = (0, 512);
        vm.PagesPerSecond = 20_000;
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, _) = Migrate(vm, target,
            new MigrationParameters { MaxBandwidth = 8 << 20, DowntimeLimitMs = 50, MultifdChannels = 2, CpuThrottleInitial = 50, CpuThrottleIncrement = 20 },
            new MigrationCapabilities { AutoConverge = true });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(vm.MaxThrottle >= 50, $"throttle reached {vm.MaxThrottle}%");
        Assert.Equal(0, vm.Throttle); // released at the end
        Assert.Contains(stats.Passes, p => p.ThrottlePercent >= 50);
        AssertSameMemory(vm, target);
    }

    private static (PrecopyMigration Migration, Task<MigrationStats> Run, Task<IncomingReport> Receive, InMemoryChannels Channels) StartSlow(SyntheticVm vm, SyntheticTarget target, Func<System.IO.Stream, System.IO.Stream>? wrap = null)
    {
        var channels = new InMemoryChannels(wrap);
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        var migration = new PrecopyMigration(vm, new MigrationParameters { MaxBandwidth = 16 << 20, MultifdChannels = 2 }, new MigrationCapabilities());
        return (migration, Task.Run(() => migration.Run(channels)), receive, channels);
    }

    /// <summary>Waits until the slow migration is sending (not a fixed sleep: a loaded machine may start it late), then a little more.</summary>
    private static void WaitUntilSending(PrecopyMigration migration)
    {
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (migration.Status != MigrationStatus.Active && DateTime.UtcNow < deadline)
            Thread.Sleep(5);
        Assert.Equal(MigrationStatus.Active, migration.Status);
        Thread.Sleep(100);
    }

    [Fact]
    public void Cancel_midway_leaves_the_source_running_and_the_destination_failed()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 8192, 1); // 32 MiB at 16 MiB/s: two seconds
        vm.WorkingSet = (0, 64);
        vm.PagesPerSecond = 1000;
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var (migration, run, receive, _) = StartSlow(vm, target);
        using (migration)
        {
            WaitUntilSending(migration);
            migration.Cancel();
            Assert.Equal("migration cancelled", Assert.Throws<MigrationException>(() => run.GetAwaiter().GetResult()).Message);
            Assert.False(vm.IsPaused);
            Assert.False(vm.DirtyLogging);
            var generation = vm.Generation;
            Thread.Sleep(100);
            Assert.True(vm.Generation > generation, "the source guest kept running");
            Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
            Assert.False(target.Resumed);
        }
    }

    [Fact]
    public void A_cancel_during_setup_is_reported_as_a_cancel()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        // A guest that never answers the hint run: setup waits for it (up to the budget), and the cancel comes then.
        vm.SyntheticBalloon = new SyntheticBalloon(vm) { FreeRanges = null };
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { HintBudgetMs = 5000 }, new MigrationCapabilities());
        var run = Task.Run(() => migration.Run(channels));
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (vm.SyntheticBalloon.RunsStarted == 0 && DateTime.UtcNow < deadline)
            Thread.Sleep(5);

        migration.Cancel();

        Assert.Equal("migration cancelled", Assert.Throws<MigrationException>(() => run.GetAwaiter().GetResult()).Message);
        Assert.Equal(MigrationStatus.Cancelled, migration.Status);
        Assert.False(vm.IsPaused);
        Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
    }

    [Fact]
    public void A_destination_killed_midway_fails_the_migration_and_the_source_runs_on()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 8192, 1);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var (migration, run, receive, channels) = StartSlow(vm, target);
        using (migration)
        {
            WaitUntilSending(migration);
            channels.BreakAll();
            var error = Assert.Throws<MigrationException>(() => run.GetAwaiter().GetResult());
            Assert.Contains("connection", error.Message, StringComparison.OrdinalIgnoreCase);
            Assert.Equal(MigrationErrorKind.ChannelFailed, error.Kind);
            Assert.Equal(MigrationErrorKind.ChannelFailed, migration.Snapshot().ErrorKind);
            Assert.Equal(MigrationStatus.Failed, migration.Status);
            Assert.Equal(error.Message, migration.Snapshot().Error);
            Assert.False(vm.IsPaused);
            Assert.False(vm.DirtyLogging);
            Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
        }
    }

    [Fact]
    public void A_destination_with_other_memory_refuses_and_the_source_hears_why()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 10, 1);
        using var other = new SyntheticVm(32 * MiB);
        using var target = new SyntheticTarget(other.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());

        var error = Assert.Throws<MigrationException>(() => migration.Run(channels));

        Assert.Contains("RAM block 'ram-low' is 67108864 bytes in the stream and 33554432 here", error.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationErrorKind.DestinationRefused, error.Kind);
        Assert.Contains("RAM block 'ram-low'", Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult()).Message, StringComparison.Ordinal);
        Assert.False(vm.IsPaused);
    }

    public static TheoryData<RecordType, bool> DamagedRecords()
    {
        var data = new TheoryData<RecordType, bool>();
        foreach (var type in new[] { RecordType.Pages, RecordType.ZeroRun, RecordType.BalloonBitmap, RecordType.State, RecordType.PassEnd, RecordType.End })
        {
            data.Add(type, false);
            data.Add(type, true);
        }
        return data;
    }

    [Theory]
    [MemberData(nameof(DamagedRecords))]
    public void A_corrupted_or_truncated_record_is_refused_and_the_source_runs_on(RecordType type, bool truncate)
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 300, 1);
        vm.Blocks[0].Mapping.GetSpan(1000 * 4096, 4096).Clear();
        var balloon = new SyntheticBalloon(vm) { FreeRanges = [] };
        vm.SyntheticBalloon = balloon;
        balloon.Inflate(0, 2000, 64);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var saboteur = new StreamSaboteur(type, truncate);
        var channels = new InMemoryChannels(saboteur.Wrap);
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2, SwitchoverTimeoutMs = 10_000 }, new MigrationCapabilities());

        var sourceError = Assert.Throws<MigrationException>(() => migration.Run(channels));
        var destinationError = Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());

        Assert.True(saboteur.Struck, $"no {type} record passed");
        Assert.Contains(truncate ? "truncated" : "checksum mismatch", destinationError.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationErrorKind.InvalidStream, destinationError.Kind);
        Assert.False(target.Resumed);
        Assert.Null(target.State);
        Assert.False(vm.IsPaused, $"source left paused after: {sourceError.Message}");
        Assert.Equal(MigrationStatus.Failed, migration.Status);
        // The source reports the destination's reason, never its own broken pipe, whenever the reason could reach
        // it: a cut connection (truncate) takes channel 0's way back with it when channel 0 is the one cut.
        if (!truncate || !sourceError.Message.Contains("connection cut by the test", StringComparison.Ordinal))
            Assert.Equal($"the destination failed: {destinationError.Message}", sourceError.Message);
        Assert.DoesNotContain("Exception", sourceError.Message, StringComparison.Ordinal);
    }
}
