using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Xunit;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>Save and load through the file, without KVM: memfd blocks on both sides.</summary>
public sealed class SnapshotRoundTripTests
{
    /// <summary>Two blocks: data pages, touched-but-zero pages and never-touched pages in each.</summary>
    private static RamBlock[] SourceBlocks(out ulong dataPages)
    {
        var low = RamBlock.Create("ram-low", 0, 64 * MiB, 0);
        var high = RamBlock.Create("ram-high", 4UL << 30, 32 * MiB + 3 * Page.Size, 1); // 8195 pages: a partial last word
        FillPages(low, 0, 1, 1);                       // page 0
        FillPages(low, 100, 300, 1);                   // a run across many words
        FillPages(low, 5000, 1, 2);                    // a lone page
        low.Mapping.GetSpan(2000 * Page.Size, 50 * Page.Size).Clear(); // touched, but zero: allocated in the memfd
        FillPages(low, 16383, 1, 3);                   // the last page
        FillPages(high, 7, 10, 4);
        FillPages(high, 8192, 3, 5);                   // the partial last word
        high.Mapping.GetSpan(20 * Page.Size, 5 * Page.Size).Clear();
        // Non-zero only in the last byte: the zero check must look at all of it.
        high.Mapping.GetSpan(1000 * Page.Size, Page.Size)[Page.Size - 1] = 0x5A;
        dataPages = 1 + 300 + 1 + 1 + 10 + 3 + 1;
        return [low, high];
    }

    private static RamBlock[] LikeBlocks(IReadOnlyList<RamBlock> blocks) =>
        [.. blocks.Select(b => RamBlock.Create(b.Name, b.GuestPhysicalAddress, b.Size, b.Slot))];

    private static void DisposeAll(IEnumerable<RamBlock> blocks)
    {
        foreach (var b in blocks)
            b.Dispose();
    }

    [Fact]
    public void Two_blocks_round_trip_with_only_data_pages_written_and_loaded()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        var source = SourceBlocks(out var dataPages);
        var destination = LikeBlocks(source);
        try
        {
            var sourceAllocated = source.Select(b => b.AllocatedBytes()).ToArray();
            var state = SampleState();

            var saved = SaveThroughEngine(path, source, state, threads: 4);

            Assert.Equal((long)dataPages, saved.NormalPages);
            Assert.Equal(55, saved.ZeroPages);
            Assert.Equal((long)(source.Sum(b => (long)b.PageCount) - (long)dataPages - 55), saved.UntouchedPages);
            Assert.Equal((long)dataPages * Page.Size, saved.TransferredBytes);
            // Never-touched pages were never read (reading a shmem hole would allocate it).
            Assert.Equal(sourceAllocated, source.Select(b => b.AllocatedBytes()).ToArray());

            // The file: full apparent size, but on disk only the data pages and the metadata.
            var fileLength = new FileInfo(path).Length;
            Assert.True(fileLength > (long)(source[0].Size + source[1].Size), $"file is {fileLength} bytes");
            var metadata = 2 * Page.Size                                    // header page, block table
                           + 2 * Page.Size                                  // present bitmaps (2 KiB and 1 KiB); balloon bitmaps are empty holes
                           + state.Sum(s => 16 + s.Name.Length + s.Blob.Length);
            var onDisk = AllocatedOnDisk(path);
            var expected = (long)dataPages * Page.Size + metadata;
            Assert.True(onDisk >= (long)dataPages * Page.Size, $"{onDisk} bytes on disk for {dataPages} data pages");
            Assert.True(onDisk <= expected * 105 / 100, $"{onDisk} bytes on disk, expected within 5% of {expected}");

            using var file = SnapshotFile.Open(path);
            var loaded = file.LoadInto(destination, threads: 3);

            Assert.Equal((long)dataPages, loaded.PagesLoaded);
            Assert.Equal((long)dataPages * Page.Size, loaded.BytesRead);
            Assert.Equal(0, loaded.PagesDiscarded);
            Assert.Equal((long)dataPages, loaded.PagesChecked);
            // The destination holds exactly the data pages: zero and untouched pages are holes.
            Assert.Equal(dataPages * Page.Size, destination.Aggregate(0UL, (s, b) => s + b.AllocatedBytes()));
            Assert.Equal(state.Length, loaded.State.Count);
            for (var i = 0; i < state.Length; i++)
            {
                Assert.Equal(state[i].Kind, loaded.State[i].Kind);
                Assert.Equal(state[i].Index, loaded.State[i].Index);
                Assert.Equal(state[i].Name, loaded.State[i].Name);
                Assert.Equal(state[i].Blob, loaded.State[i].Blob);
            }
            AssertSameMemory(source, destination);
        }
        finally
        {
            DisposeAll(source);
            DisposeAll(destination);
        }
    }

    [Fact]
    public void Loading_matches_blocks_by_name_in_any_order_and_turns_stale_target_pages_into_holes()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        var source = SourceBlocks(out var dataPages);
        // The target lists its blocks the other way round, and (like a machine after its boot setup) already
        // holds data in pages the snapshot does not have, and in one it does.
        var destination = LikeBlocks(source).Reverse().ToArray();
        try
        {
            SaveThroughEngine(path, source, [], threads: 2);
            FillPages(destination[1], 1, 4, 9);   // ram-low pages 1..4: absent in the snapshot
            FillPages(destination[1], 100, 1, 9); // ram-low page 100: present, overwritten by the load
            FillPages(destination[0], 30, 2, 9);  // ram-high pages 30..31: absent

            using var file = SnapshotFile.Open(path);
            var loaded = file.LoadInto(destination, threads: 1);

            Assert.Equal(6, loaded.PagesDiscarded);
            Assert.Equal(dataPages * Page.Size, destination.Aggregate(0UL, (s, b) => s + b.AllocatedBytes()));
            AssertSameMemory(source, [destination[1], destination[0]]);
        }
        finally
        {
            DisposeAll(source);
            DisposeAll(destination);
        }
    }

    [Fact]
    public void A_lazy_load_maps_the_file_reads_nothing_and_holds_what_an_eager_load_holds()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        var source = SourceBlocks(out var dataPages);
        var destination = LikeBlocks(source).Reverse().ToArray();
        try
        {
            SaveThroughEngine(path, source, SampleState(), threads: 2);
            FillPages(destination[1], 1, 4, 9); // boot-time leftovers in pages the snapshot does not have

            using (var file = SnapshotFile.Open(path))
            {
                var mapped = file.MapInto(destination, threads: 2);
                Assert.Equal(0, mapped.PagesLoaded);
                // Every present page was checked before anything was mapped.
                Assert.Equal((long)dataPages, mapped.PagesChecked);
                Assert.Equal(SampleState().Length, mapped.State.Count);
            }
            // Nothing was copied: the process owns no page of either block until one is written.
            Assert.Equal(0UL, destination.Aggregate(0UL, (s, b) => s + b.AllocatedBytes()));
            // The file was closed above: the mappings keep it alive.
            AssertSameMemory(source, [destination[1], destination[0]]);
            Assert.Equal(dataPages, destination.Aggregate(0UL, (s, b) => s + b.FileMappedPages));
            // A later migration or snapshot finds exactly the present pages as data.
            Assert.Equal(dataPages, destination.Aggregate(0UL, (s, b) => s + b.DataExtents().Aggregate(0UL, (n, e) => n + e.Length / Page.Size)));
        }
        finally
        {
            DisposeAll(source);
            DisposeAll(destination);
        }
    }

    [Fact]
    public void An_empty_vm_saves_to_metadata_only()
    {
        using var dir = new TempDir();
        var path = dir.File("empty.snap");
        using var block = RamBlock.Create("ram-low", 0, 256 * MiB, 0);

        var saved = SaveThroughEngine(path, [block], [], threads: 4);

        Assert.Equal(0, saved.NormalPages);
        Assert.Equal((long)block.PageCount, saved.UntouchedPages);
        Assert.True(new FileInfo(path).Length > (long)(256 * MiB));
        Assert.True(AllocatedOnDisk(path) <= 16 * Page.Size, $"{AllocatedOnDisk(path)} bytes on disk for an empty VM");
        using var file = SnapshotFile.Open(path);
        Assert.Equal(0UL, file.Blocks[0].PresentPages);
        Assert.Empty(file.State);
    }

    [Fact]
    public void A_vm_with_other_blocks_is_refused_with_both_block_lists_named()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        using var block = RamBlock.Create("ram-low", 0, 16 * MiB, 0);
        FillPages(block, 0, 10, 1);
        SaveThroughEngine(path, [block], [], threads: 1);
        using var file = SnapshotFile.Open(path);

        using var bigger = RamBlock.Create("ram-low", 0, 32 * MiB, 0);
        var e = Assert.Throws<SnapshotFormatException>(() => file.LoadInto([bigger], 2));
        Assert.Equal(SnapshotFault.BlockMismatch, e.Fault);
        Assert.Contains("are not the VM's", e.Message);
        Assert.Contains("16777216 bytes in the snapshot and 33554432 in the VM", e.Message);

        using var renamed = RamBlock.Create("ram-other", 0, 16 * MiB, 0);
        e = Assert.Throws<SnapshotFormatException>(() => file.LoadInto([renamed], 2));
        Assert.Contains("the VM has no block 'ram-low'", e.Message);

        using var extra = RamBlock.Create("ram-high", 4UL << 30, 16 * MiB, 1);
        using var same = RamBlock.Create("ram-low", 0, 16 * MiB, 0);
        e = Assert.Throws<SnapshotFormatException>(() => file.LoadInto([same, extra], 2));
        Assert.Contains("the VM has blocks the snapshot does not", e.Message);
        // Nothing was loaded into a refused VM.
        Assert.Equal(0UL, same.AllocatedBytes());
    }

    [Fact]
    public void Inspect_reports_blocks_page_classes_sizes_state_and_checksums()
    {
        using var dir = new TempDir();
        var path = dir.File("vm.snap");
        var source = SourceBlocks(out var dataPages);
        try
        {
            var balloon = new FixedBalloon(source);
            balloon.Bitmap(1).Add(7);                          // page 7 of ram-high: it had data, now ballooned
            balloon.Bitmap(1).Add(8);                          // page 8: also
            balloon.Bitmap(1).Add(63);                         // page 63: never had data
            SaveThroughEngine(path, source, SampleState(), threads: 2, balloon);

            using var file = SnapshotFile.Open(path);
            var inspection = file.Inspect();

            Assert.Equal(path, inspection.Path);
            Assert.Equal(2u, inspection.Version);
            Assert.Null(inspection.Pages);
            Assert.Equal(0, inspection.ExitCode);
            Assert.Equal(4096, inspection.PageSize);
            Assert.Equal(new FileInfo(path).Length, inspection.FileBytes);
            Assert.InRange(inspection.AllocatedBytes, (long)(dataPages - 2) * Page.Size, AllocatedOnDisk(path));
            Assert.Equal((long)(dataPages - 2) * Page.Size, inspection.PresentBytes);
            Assert.Equal(2, inspection.Blocks.Count);
            var low = inspection.Blocks[0];
            Assert.Equal(("ram-low", 64 * MiB, 16384UL, 303UL, 0UL, 16384UL - 303), (low.Name, low.Size, low.Pages, low.PresentPages, low.BalloonedPages, low.AbsentPages));
            var high = inspection.Blocks[1];
            Assert.Equal(("ram-high", 8195UL, 12UL, 3UL, 8195UL - 15), (high.Name, high.Pages, high.PresentPages, high.BalloonedPages, high.AbsentPages));
            Assert.Equal(0UL, low.PagesOffset % MiB);
            Assert.True(high.PagesOffset >= low.PagesOffset + low.Size);
            Assert.Equal(
                [(StateKind.Vcpu, (ushort)0, "vcpu", 5000), (StateKind.Vcpu, (ushort)1, "vcpu", 5000), (StateKind.Device, (ushort)0, "virtio-mmio", 3), (StateKind.Machine, (ushort)0, "empty", 0)],
                inspection.State.Select(s => (s.Kind, s.Index, s.Name, s.Length)));
            Assert.All(inspection.State, s => Assert.NotEqual(0u, s.Crc));
            // Header, completion mark, 2 entries, 2 x 2 bitmaps, 4 state sections.
            Assert.Equal(new SnapshotChecksums(1 + 1 + 2 + 4 + 4, 0, inspection.Checksums.Status), inspection.Checksums);
            Assert.StartsWith("ok", inspection.Checksums.Status);
            // The balloon bitmap is there for the balloon device's state on restore.
            Assert.Equal([0b1000_0000, 0b0000_0001], file.Blocks[1].BalloonBitmap[..2].ToArray());
            Assert.False(file.Blocks[1].IsPresent(7));
            Assert.True(file.Blocks[1].IsPresent(9));

            var text = inspection.Format();
            Assert.Contains("ram-low", text);
            Assert.Contains("ram-high", text);
            Assert.Contains("virtio-mmio", text);
            Assert.Contains("12 verified, 0 failed", text);
        }
        finally
        {
            DisposeAll(source);
        }
    }
}
