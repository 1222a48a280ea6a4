using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;
using Xunit;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>The writer's fixed slots: overwrites in place, punching, parallel writers, and its refusals.</summary>
public sealed class SnapshotWriterTests
{
    private static byte[] PagesOf(byte value, int pages) => [.. Enumerable.Repeat(value, pages * Page.Size)];

    [Fact]
    public void Writing_a_slot_again_overwrites_it_and_the_file_never_grows()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using var target = RamBlock.Create("ram-low", 0, 16 * MiB, 0);
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            var length = new FileInfo(path).Length;
            writer.WritePages(0, 10, PagesOf(1, 8));
            var onDisk = AllocatedOnDisk(path);
            // Nine more passes over the same pages: same slots, same size, same space.
            for (byte pass = 2; pass <= 10; pass++)
                writer.WritePages(0, 10, PagesOf(pass, 8));
            Assert.Equal(length, new FileInfo(path).Length);
            Assert.Equal(onDisk, AllocatedOnDisk(path));
            Assert.Equal(80, writer.PagesWritten);
            Assert.Equal(80L * Page.Size, writer.BytesWritten);
            Assert.Equal(8, writer.PresentPages);
            writer.Finish([]);
            // The state area (empty here) is all Finish adds after the page areas.
            Assert.Equal(length, new FileInfo(path).Length);
        }

        using var file = SnapshotFile.Open(path);
        file.LoadInto([target], 2);
        Assert.True(target.Mapping.GetSpan(10 * Page.Size, 8 * Page.Size).IndexOfAnyExcept((byte)10) < 0);
        Assert.Equal(8UL * Page.Size, target.AllocatedBytes());
    }

    [Fact]
    public void Marking_written_pages_absent_punches_their_slots_and_they_load_as_holes()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using var target = RamBlock.Create("ram-low", 0, 16 * MiB, 0);
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            writer.WritePages(0, 0, PagesOf(7, 256));
            var before = AllocatedOnDisk(path);
            // Pass 2: pages 100..149 became zero, page 200 was discarded, pages 1000..1099 were never written.
            writer.MarkAbsent(0, 100, 50);
            writer.MarkAbsent(0, 200, 1);
            writer.MarkAbsent(0, 1000, 100);
            var after = AllocatedOnDisk(path);
            // 51 slots freed (one 4 KiB block may go to the extent tree the holes split).
            Assert.InRange(before - after, 50L * Page.Size, 51L * Page.Size);
            Assert.Equal(51, writer.PagesPunched);
            Assert.Equal(205, writer.PresentPages);
            writer.Finish([]);
        }
        // The target already has data there (a restore into a used machine): absent pages must not keep it.
        FillPages(target, 100, 50, 3);

        using var file = SnapshotFile.Open(path);
        Assert.False(file.Blocks[0].IsPresent(120));
        var loaded = file.LoadInto([target], 4);

        Assert.Equal(205, loaded.PagesLoaded);
        Assert.Equal(50, loaded.PagesDiscarded);
        Assert.Equal(205UL * Page.Size, target.AllocatedBytes());
        Assert.True(target.Mapping.GetSpan(100 * Page.Size, 50 * Page.Size).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(target.Mapping.GetSpan(200 * Page.Size, Page.Size).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(target.Mapping.GetSpan(201 * Page.Size, 55 * Page.Size).IndexOfAnyExcept((byte)7) < 0);
    }

    [Fact]
    public void Parallel_writers_of_disjoint_and_overlapping_ranges_leave_whole_pages_and_exact_bits()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        const int Pages = 4096;
        using var target = RamBlock.Create("ram-low", 0, 64 * MiB, 0);
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 64 * MiB)]))
        {
            // Threads 0 and 1 write disjoint halves of [0, 4096); threads 2 and 3 both write [3000, 5000) with
            // their own byte, page by page and in runs, at the same time; MarkAbsent races on other words.
            var start = new Barrier(5);
            var threads = new[]
            {
                new Thread(() => { start.SignalAndWait(); for (var p = 0; p < Pages / 2; p += 16) writer.WritePages(0, (ulong)p, PagesOf(1, 16)); }),
                new Thread(() => { start.SignalAndWait(); for (var p = Pages / 2; p < Pages; p += 3) writer.WritePages(0, (ulong)p, PagesOf(2, Math.Min(3, Pages - p))); }),
                new Thread(() => { start.SignalAndWait(); for (var p = 3000; p < 5000; p++) writer.WritePages(0, (ulong)p, PagesOf(3, 1)); }),
                new Thread(() => { start.SignalAndWait(); for (var p = 3000; p < 5000; p += 40) writer.WritePages(0, (ulong)p, PagesOf(4, 40)); }),
                new Thread(() => { start.SignalAndWait(); for (var p = 8000; p < 9000; p++) writer.MarkAbsent(0, (ulong)p, 1); }),
            };
            foreach (var t in threads)
                t.Start();
            foreach (var t in threads)
                t.Join();
            Assert.Equal(5000, writer.PresentPages);
            Assert.Equal(Pages + 2000 + 2000, writer.PagesWritten);
            writer.Finish([]);
        }

        using var file = SnapshotFile.Open(path);
        Assert.Equal(5000UL, file.Blocks[0].PresentPages);
        file.LoadInto([target], 4);
        for (var p = 0; p < 5000; p++)
        {
            var page = target.Mapping.GetSpan((ulong)p * Page.Size, Page.Size);
            var allowed = p switch
            {
                < 2048 => new byte[] { 1 },
                < 3000 => [2],
                < 4096 => [2, 3, 4],
                _ => [3, 4],
            };
            var first = page[0];
            Assert.Contains(first, allowed);
            Assert.True(page.IndexOfAnyExcept(first) < 0, $"page {p} is torn");
        }
        Assert.Equal(5000UL * Page.Size, target.AllocatedBytes());
    }

    [Fact]
    public void An_unfinished_file_is_refused_as_not_finished()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            writer.WritePages(0, 0, PagesOf(1, 4));
            // A reader looking while the save runs.
            var running = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(path));
            Assert.Equal(SnapshotFault.NotFinished, running.Fault);
            // Disposed without Finish: a failed save.
        }
        var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(path));
        Assert.Equal(SnapshotFault.NotFinished, e.Fault);
        Assert.Contains("not finished", e.Message);
        Assert.Contains(path, e.Message);
    }

    [Fact]
    public void Creating_over_a_finished_snapshot_truncates_it_first()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            writer.WritePages(0, 0, PagesOf(1, 100));
            writer.Finish([]);
        }
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            // The old pages are gone at once (not merely unreferenced), and the old file is no longer finished.
            Assert.True(AllocatedOnDisk(path) < 100L * Page.Size);
            Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(path));
            writer.WritePages(0, 50, PagesOf(2, 1));
            writer.Finish([]);
        }
        using var file = SnapshotFile.Open(path);
        Assert.Equal(1UL, file.Blocks[0].PresentPages);
        Assert.True(file.Blocks[0].IsPresent(50));
    }

    [Fact]
    public void The_writer_refuses_bad_calls_and_calls_after_finish()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]);
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.WritePages(1, 0, PagesOf(1, 1)));
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.WritePages(0, 4095, PagesOf(1, 2)));
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.WritePages(0, ulong.MaxValue, PagesOf(1, 1)));
        Assert.Throws<ArgumentException>(() => writer.WritePages(0, 0, new byte[100]));
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.MarkAbsent(0, 4000, 200));
        Assert.Throws<ArgumentException>(() => writer.SetBallooned(0, 3, new byte[8]));
        Assert.Throws<ArgumentOutOfRangeException>(() => writer.SetBallooned(0, 4096, new byte[8]));
        Assert.Throws<ArgumentException>(() => writer.Finish([new(StateKind.Vcpu, 0, new string('x', 65), [])]));
        // Argument errors do not poison the writer.
        writer.WritePages(0, 0, PagesOf(1, 1));
        writer.Finish([]);
        Assert.True(writer.IsFinished);
        Assert.Throws<InvalidOperationException>(() => writer.WritePages(0, 0, PagesOf(1, 1)));
        Assert.Throws<InvalidOperationException>(() => writer.MarkAbsent(0, 0, 1));
        Assert.Throws<InvalidOperationException>(() => writer.Finish([]));

        Assert.Throws<ArgumentException>(() => SnapshotWriter.Create(dir.File("x"), Array.Empty<BlockDescriptor>()));
        Assert.Throws<ArgumentException>(() => SnapshotWriter.Create(dir.File("x"), [new BlockDescriptor("a", 4096), new BlockDescriptor("a", 4096)]));
        Assert.Throws<ArgumentException>(() => SnapshotWriter.Create(dir.File("x"), [new BlockDescriptor("a", 1000)]));
        Assert.Throws<ArgumentException>(() => SnapshotWriter.Create(dir.File("x"), [new BlockDescriptor("", 4096)]));
    }

    [Fact]
    public void Ballooned_pages_punch_their_slots_and_a_later_write_takes_them_out_of_the_balloon()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            writer.WritePages(0, 64, PagesOf(5, 64));
            var bitmap = new byte[16];
            bitmap[0] = 0xFF;                  // pages 64..71 into the balloon
            bitmap[8] = 0x01;                  // page 128: never written
            writer.SetBallooned(0, 64, bitmap);
            Assert.Equal(8, writer.PagesPunched);
            writer.WritePages(0, 70, PagesOf(6, 1)); // deflated and written again
            writer.Finish([]);
        }
        using var file = SnapshotFile.Open(path);
        var block = file.Blocks[0];
        Assert.Equal(57UL, block.PresentPages);
        Assert.Equal(8UL, block.BalloonedPages);
        Assert.True(block.IsPresent(70));
        Assert.Equal(0b1011_1111, block.BalloonBitmap[8]);
        Assert.Equal(0b0000_0001, block.BalloonBitmap[16]);
    }
}
