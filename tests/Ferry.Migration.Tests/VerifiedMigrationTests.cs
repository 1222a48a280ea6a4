using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// Verified migration (capability ferry-verify) end to end without KVM: synthetic memory and guest, in-memory
/// channels, the real receiver. The destination compares a digest per chunk before it resumes the guest.
/// </summary>
public sealed class VerifiedMigrationTests
{
    private const ulong MiB = 1UL << 20;
    private static readonly MigrationCapabilities Verify = new() { Verify = true };

    /// <summary>Runs a migration expected to fail; returns the source's and the destination's errors.</summary>
    private static (MigrationException Source, MigrationException Destination, PrecopyMigration Migration) MigrateFailing(
        SyntheticVm vm, SyntheticTarget target, MigrationCapabilities capabilities, Action<PrecopyMigration>? setup = null)
    {
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2 }, capabilities);
        setup?.Invoke(migration);
        var source = Assert.Throws<MigrationException>(() => migration.Run(channels));
        var destination = Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
        return (source, destination, migration);
    }

    [Fact]
    public void A_verified_migration_of_a_guest_writing_throughout_completes_and_its_digests_are_a_downtime_phase()
    {
        using var vm = new SyntheticVm(64 * MiB, 16 * MiB);
        vm.Fill(0, 0, 8192, 1);   // 16 chunks with data
        vm.Fill(1, 100, 10, 1);   // and one in the second block
        vm.WorkingSet = (1000, 2000);
        vm.PagesPerSecond = 50_000;
        vm.Start();
        Thread.Sleep(50);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, report) = PrecopyEngineTests.Migrate(vm, target, new MigrationParameters { MultifdChannels = 3 }, Verify);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(stats.Passes.Count >= 2, $"{stats.Passes.Count} passes");
        Assert.Equal(17, stats.VerifiedChunks);
        Assert.Equal(17, report.VerifiedChunks);
        Assert.True(target.Resumed);
        var phases = stats.Downtime!;
        Assert.True(phases.VerifyMs > 0, $"verify phase {phases.VerifyMs} ms");
        double[] parts = [phases.PauseMs, phases.SyncMs, phases.FinalPassMs, phases.VerifyMs, phases.SaveStateMs, phases.CompleteMs, phases.ResumeMs];
        Assert.Equal(stats.DowntimeMs!.Value, parts.Sum(), 0.001);
        PrecopyEngineTests.AssertSameMemory(vm, target);
    }

    [Fact]
    public void Without_the_capability_no_digest_is_sent_and_the_phase_is_zero()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, report) = PrecopyEngineTests.Migrate(vm, target);

        Assert.Equal(0, stats.VerifiedChunks);
        Assert.Equal(0, report.VerifiedChunks);
        Assert.Equal(0, stats.Downtime!.VerifyMs);
    }

    /// <summary>After pass 1 the guest rewrites page 1500 and the dirty log loses that write.</summary>
    private static void LoseADirtyPage(SyntheticVm vm)
    {
        var syncs = 0;
        vm.Syncing += _ =>
        {
            if (Interlocked.Increment(ref syncs) != 1)
                return;
            vm.Fill(0, 1500, 1, 2);
            vm.Blocks[0].VmmDirty.Remove(1500);
        };
    }

    [Fact]
    public void A_dirty_page_the_log_lost_fails_the_migration_naming_its_chunk_and_the_source_guest_runs_on()
    {
        // Without verification the same fault completes with a wrong page on the destination.
        using (var unverified = new SyntheticVm(16 * MiB))
        {
            unverified.Fill(0, 0, 2048, 1);
            unverified.Start();
            LoseADirtyPage(unverified);
            using var wrong = new SyntheticTarget(unverified.Blocks);
            var (stats, _) = PrecopyEngineTests.Migrate(unverified, wrong);
            Assert.Equal(MigrationStatus.Completed, stats.Status);
            Assert.False(unverified.Blocks[0].Mapping.GetSpan(1500 * 4096, 4096).SequenceEqual(wrong.Blocks[0].Mapping.GetSpan(1500 * 4096, 4096)));
        }

        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 2048, 1);
        vm.Start();
        LoseADirtyPage(vm);
        using var target = new SyntheticTarget(vm.Blocks);

        var (source, destination, migration) = MigrateFailing(vm, target, Verify);

        Assert.Equal(MigrationErrorKind.VerifyFailed, destination.Kind);
        Assert.StartsWith("memory verification failed: block 'ram-low' chunk 2 (pages 1024..1535, offset 0x400000) differs", destination.Message);
        Assert.Equal(MigrationErrorKind.DestinationFailed, source.Kind);
        Assert.Contains(destination.Message, source.Message);
        Assert.False(source.DestinationMayBeRunning);
        Assert.Equal(MigrationStatus.Failed, migration.Status);
        Assert.False(vm.IsPaused);       // the source guest was resumed
        Assert.False(target.Resumed);    // the destination never ran it
        Assert.Null(target.State);       // nor restored its state
        Assert.False(vm.DirtyLogging);
    }

    [Fact]
    public void A_destination_page_damaged_after_it_was_loaded_fails_the_migration_before_the_guest_resumes_there()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 2048, 1);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        // The live pass is loaded when the source pauses; page 700 goes bad on the destination then.
        vm.Pausing += () => target.Blocks[0].Mapping.GetSpan(700 * 4096 + 123, 1)[0] ^= 0x10;

        var (source, destination, _) = MigrateFailing(vm, target, Verify);

        Assert.StartsWith("memory verification failed: block 'ram-low' chunk 1 (pages 512..1023, offset 0x200000) differs", destination.Message);
        Assert.Contains("chunk 1", source.Message);
        Assert.False(vm.IsPaused);
        Assert.False(target.Resumed);
    }

    [Fact]
    public void Data_on_the_destination_where_the_source_holds_nothing_is_caught()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        using var target = new SyntheticTarget(vm.Blocks);
        // A chunk the source never touched, so it sends no digest for it: the destination must hold nothing there.
        target.Blocks[0].Mapping.GetSpan(3000 * 4096, 1)[0] = 1;

        var (_, destination, _) = MigrateFailing(vm, target, Verify);

        Assert.StartsWith("memory verification failed: block 'ram-low' chunk 5 (pages 2560..3071, offset 0xA00000) holds data here and nothing at the source", destination.Message);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Hinted_ballooned_and_reported_pages_that_differ_cause_no_false_mismatch(bool mustTellHost)
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 3000, 1);
        // Run 1 hints [500, 1500) before pass 1 reads it: never sent, so the destination holds zeros where the source
        // holds data. Ten of them the guest reuses (the dirty log sends them, and they are compared again).
        var balloon = new SyntheticBalloon(vm) { MustTellHost = mustTellHost, FreeRanges = [(0, 500, 1000)], LaterFreeRanges = [(0, 510, 990)] };
        vm.SyntheticBalloon = balloon;
        vm.WorkingSet = (500, 10);
        vm.PagesPerSecond = 2000;
        balloon.Bitmap(0).AddRange(2000, 100);   // in the balloon, the host's copy not dropped (the source holds data)
        balloon.Inflate(0, 2200, 50);
        var syncs = 0;
        vm.Syncing += _ =>
        {
            if (Interlocked.Increment(ref syncs) != 1)
                return;
            // After pass 1 sent them: reported free (the host discards) and inflated (the same).
            balloon.Report(0, 2500, 64);
            balloon.Inflate(0, 2600, 10);
        };
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, report) = PrecopyEngineTests.Migrate(vm, target, capabilities: Verify);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(report.VerifiedChunks >= 6, $"{report.VerifiedChunks} chunks compared");
        var src = vm.Blocks[0].Mapping;
        var dst = target.Blocks[0].Mapping;
        // The pages left out really differ: a comparison of every page would have failed.
        Assert.False(src.GetSpan(600 * 4096, 4096).SequenceEqual(dst.GetSpan(600 * 4096, 4096)));
        Assert.False(src.GetSpan(2500 * 4096, 4096).SequenceEqual(dst.GetSpan(2500 * 4096, 4096)));
        if (mustTellHost)
            Assert.False(src.GetSpan(2000 * 4096, 4096).SequenceEqual(dst.GetSpan(2000 * 4096, 4096)));
        else
            Assert.False(src.GetSpan(2600 * 4096, 4096).SequenceEqual(dst.GetSpan(2600 * 4096, 4096)));
        // The pages the guest reused after their hint are compared (and equal).
        Assert.True(src.GetSpan(500 * 4096, 10 * 4096).SequenceEqual(dst.GetSpan(500 * 4096, 10 * 4096)));
    }

    [Fact]
    public void A_destination_that_does_not_verify_is_refused_before_anything_is_sent()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        var channels = new InMemoryChannels();
        // A destination of an older kind: it accepts everything it knows, which does not include verify.
        var old = Task.Run(() =>
        {
            using var stream = channels.AcceptAsync(CancellationToken.None).GetAwaiter().GetResult();
            var reader = new RecordReader(stream, [.. vm.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size))]);
            var header = reader.ReadHeader();
            ReturnPath.WriteAccept(stream, header.Capabilities & (ulong)(StreamCapabilities.All & ~StreamCapabilities.Verify));
            try
            {
                while (reader.ReadRecord().Type != RecordType.End)
                {
                }
            }
            catch (Exception e) when (e is IOException or StreamFormatException or ObjectDisposedException)
            {
                // The source hung up.
            }
        });
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 1 }, Verify);

        var e = Assert.Throws<MigrationException>(() => migration.Run(channels));

        Assert.Equal(MigrationErrorKind.DestinationRefused, e.Kind);
        Assert.Contains("does not verify migrated memory (capability ferry-verify)", e.Message);
        old.Wait(TimeSpan.FromSeconds(10));
    }
}
