using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Tests.Synthetic;
using Xunit;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>
/// The unchanged precopy engine writing into a file through <see cref="SnapshotOutput"/> (its IMigrationOutput),
/// over synthetic memory and a synthetic writing guest: the file layer is enough for live and paused saves.
/// </summary>
public sealed class SnapshotOutputTests
{
    private static RamBlock[] Load(string path, IReadOnlyList<RamBlock> like, out SnapshotLoadResult result)
    {
        var blocks = like.Select(b => RamBlock.Create(b.Name, b.GuestPhysicalAddress, b.Size, b.Slot)).ToArray();
        using var file = SnapshotFile.Open(path);
        result = file.LoadInto(blocks, 4);
        return blocks;
    }

    [Fact]
    public void A_guest_writing_throughout_a_live_save_loads_as_it_was_when_paused_and_the_file_did_not_grow()
    {
        using var dir = new TempDir();
        var path = dir.File("live.snap");
        using var vm = new SyntheticVm(64 * MiB, 16 * MiB);
        vm.Fill(0, 0, 8192, 1);
        vm.Fill(1, 10, 100, 1);
        vm.WorkingSet = (1000, 2000);
        vm.PagesPerSecond = 50_000;
        vm.Start();
        Thread.Sleep(50);
        using var output = new SnapshotOutput(path, 4);
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MaxBandwidth = (long)(256 * MiB) }, new MigrationCapabilities());
        // What the guest held at the switch-over: the guest is resumed as soon as its state is written, before
        // the file's final sync and completion mark.
        RamBlock[]? atSwitchover = null;
        var finishedAtResume = true;
        long generationAtSwitchover = -1;
        vm.Resuming += () =>
        {
            finishedAtResume = output.Writer!.IsFinished;
            generationAtSwitchover = vm.Generation;
            atSwitchover = [.. vm.Blocks.Select(b =>
            {
                var copy = RamBlock.Create(b.Name, b.GuestPhysicalAddress, b.Size, b.Slot);
                b.Mapping.GetSpan(0, (int)b.Size).CopyTo(copy.Mapping.GetSpan(0, (int)b.Size));
                return copy;
            })];
        };

        var stats = migration.Run(output);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.False(vm.IsPaused, "a live snapshot leaves the guest running");
        Assert.NotNull(atSwitchover);
        Assert.False(finishedAtResume, "the guest waited for the final sync");
        Assert.True(output.Writer!.IsFinished);
        Assert.True(stats.Passes.Count >= 2, $"{stats.Passes.Count} passes");
        Assert.Equal(4, stats.Channels);
        // Several passes rewrote the working set, each into the same slots: the file is RAM plus metadata.
        Assert.True(output.Writer!.PagesWritten > 8192 + 100, $"{output.Writer.PagesWritten} page writes");
        Assert.True(new FileInfo(path).Length < (long)(80 * MiB + 3 * MiB), $"{new FileInfo(path).Length} bytes");
        Assert.True(AllocatedOnDisk(path) < (8192L + 100) * Page.Size + 2 * (long)MiB);

        var generation = vm.Generation;
        Thread.Sleep(50);
        Assert.True(vm.Generation > generation, "the guest did not run on after the save");
        vm.PauseGuest();
        var loaded = Load(path, vm.Blocks, out var result);
        try
        {
            Assert.Equal(8292, result.PagesLoaded);
            Assert.Equal(generationAtSwitchover, BitConverter.ToInt64(result.State.Single(s => s.Name == "synthetic").Blob));
            AssertSameMemory(atSwitchover, loaded);
        }
        finally
        {
            foreach (var b in loaded.Concat(atSwitchover))
                b.Dispose();
        }
    }

    [Fact]
    public void A_page_zeroed_after_pass_1_wrote_it_is_punched_and_loads_as_a_hole()
    {
        using var dir = new TempDir();
        var path = dir.File("zeroed.snap");
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        using var output = new SnapshotOutput(path, 2);
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());
        migration.PassCompleted += pass =>
        {
            if (pass.Pass != 1)
                return;
            vm.Blocks[0].Mapping.GetSpan(5 * 4096, 4096).Clear();
            vm.Fill(0, 6, 1, 2);
            vm.Blocks[0].VmmDirty.Add(5);
        };

        migration.Run(output);

        Assert.Equal(1, output.Writer!.PagesPunched);
        var loaded = Load(path, vm.Blocks, out var result);
        try
        {
            Assert.Equal(99, result.PagesLoaded);
            Assert.Equal(99UL * Page.Size, loaded[0].AllocatedBytes());
            AssertSameMemory(vm.Blocks, loaded);
        }
        finally
        {
            loaded[0].Dispose();
        }
    }

    [Fact]
    public void A_trusted_balloon_is_recorded_not_written_and_a_paused_save_takes_one_pass()
    {
        using var dir = new TempDir();
        var path = dir.File("balloon.snap");
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 1000, 1);
        var balloon = new SyntheticBalloon(vm) { FreeRanges = [] };
        vm.SyntheticBalloon = balloon;
        balloon.Inflate(0, 200, 200);
        balloon.Bitmap(0).AddRange(600, 100);
        vm.PauseGuest();
        using var output = new SnapshotOutput(path, 3);
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());

        var stats = migration.Run(output);

        Assert.Equal(700, stats.NormalPages);
        Assert.Equal(300, stats.BalloonedPages);
        Assert.Equal(0, stats.Passes[^1].NormalPages); // paused: nothing left for the final pass
        using var file = SnapshotFile.Open(path);
        Assert.Equal(700UL, file.Blocks[0].PresentPages);
        Assert.Equal(300UL, file.Blocks[0].BalloonedPages);
        Assert.True(System.Runtime.InteropServices.MemoryMarshal.AsBytes(balloon.Bitmap(0).Words).SequenceEqual(file.Blocks[0].BalloonBitmap));
    }

    [Fact]
    public void A_file_that_cannot_be_created_fails_the_save_and_the_guest_runs_on()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 10, 1);
        using var output = new SnapshotOutput("/nonexistent-dir/x.snap", 2);
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());

        var e = Assert.Throws<MigrationException>(() => migration.Run(output));

        Assert.Contains("cannot create snapshot /nonexistent-dir/x.snap", e.Message);
        Assert.False(vm.IsPaused);
        Assert.Equal(MigrationStatus.Failed, migration.Status);
    }

    [Fact]
    public void A_final_sync_that_fails_after_the_guest_resumed_fails_the_save_leaves_an_unfinished_file_and_the_guest_running()
    {
        using var dir = new TempDir();
        var path = dir.File("unsynced.snap");
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        vm.WorkingSet = (0, 100);
        vm.PagesPerSecond = 10_000;
        vm.Start();
        using var output = new FinishFails(new SnapshotOutput(path, 2));
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());

        var e = Assert.Throws<MigrationException>(() => migration.Run(output));

        Assert.Contains("disk full (simulated)", e.Message);
        Assert.Equal(MigrationStatus.Failed, migration.Status);
        Assert.False(vm.IsPaused);
        output.Dispose();
        Assert.Equal(SnapshotFault.NotFinished, Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(path)).Fault);
    }

    [Fact]
    public void The_first_writer_failure_is_reported_not_a_lower_channels_echo_of_the_abort()
    {
        using var dir = new TempDir();
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 4096, 1); // every chunk holds data, so both channels write
        using var output = new SecondWriterFails(new SnapshotOutput(dir.File("full.snap"), 2));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2 }, new MigrationCapabilities());

        var e = Assert.Throws<MigrationException>(() => migration.Run(output));

        Assert.Contains("No space left on device (simulated)", e.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("closed", e.Message, StringComparison.Ordinal);
        Assert.True(output.EchoThrown, "channel 0 did not fail after the abort");
        Assert.False(vm.IsPaused);
    }

    /// <summary>
    /// Channel 1's writer fails at its first pages (a full disk); channel 0's waits for the abort that failure causes
    /// and then fails as a closed channel would: the echo comes later in time but from the lower channel.
    /// </summary>
    private sealed class SecondWriterFails(SnapshotOutput inner) : IMigrationOutput
    {
        private readonly ManualResetEventSlim _aborted = new();
        private readonly ManualResetEventSlim _channel0Writing = new();

        public bool EchoThrown { get; private set; }

        public string Description => inner.Description;

        public bool SourceRunsOn => inner.SourceRunsOn;

        public IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel) =>
            [.. inner.Open(blocks, cancel).Select((sink, i) => (IPageSink)new Sink(this, sink, i))];

        public void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout) => inner.Complete(state, timeout);

        public void Finish() => inner.Finish();

        public void Abort(bool keepControl)
        {
            _aborted.Set();
            inner.Abort(keepControl);
        }

        public string? RemoteFailure() => inner.RemoteFailure();

        public void Dispose()
        {
            inner.Dispose();
            _aborted.Dispose();
            _channel0Writing.Dispose();
        }

        private sealed class Sink(SecondWriterFails output, IPageSink inner, int channel) : IPageSink
        {
            public long BytesWritten => inner.BytesWritten;

            public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages)
            {
                if (channel == 1)
                {
                    // Fail only once channel 0 is inside a write, so its echo of the abort is certain to follow (a
                    // loaded machine may start channel 0 late, and a cancelled token would then stop it before any write).
                    if (!output._channel0Writing.Wait(TimeSpan.FromSeconds(30)))
                        throw new TimeoutException("channel 0 never wrote");
                    throw new IOException("No space left on device (simulated)");
                }
                output._channel0Writing.Set();
                if (!output._aborted.Wait(TimeSpan.FromSeconds(30)))
                    throw new TimeoutException("channel 1 never failed");
                output.EchoThrown = true;
                throw new IOException("the channel was closed");
            }

            public void WriteZeroRun(ushort block, ulong pageOffset, uint count) => inner.WriteZeroRun(block, pageOffset, count);

            public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) => inner.WriteBalloonBitmap(block, firstPage, bitmap);

            public void EndPass(uint pass) => inner.EndPass(pass);
        }
    }

    /// <summary>A snapshot output whose final sync fails (as a full or failing disk would make it).</summary>
    private sealed class FinishFails(SnapshotOutput inner) : IMigrationOutput
    {
        public string Description => inner.Description;

        public bool SourceRunsOn => inner.SourceRunsOn;

        public IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel) => inner.Open(blocks, cancel);

        public void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout) => inner.Complete(state, timeout);

        public void Finish() => throw new IOException("disk full (simulated)");

        public void Abort(bool keepControl) => inner.Abort(keepControl);

        public string? RemoteFailure() => inner.RemoteFailure();

        public void Dispose() => inner.Dispose();
    }
}
