using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Xunit;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>
/// The lazy restore through userfaultfd without KVM (<see cref="SnapshotFile.PageInto"/>): a real snapshot file, written
/// by the engine from synthetic memory, demand-paged into fresh blocks that host threads touch. Every page arrives
/// checked against its CRC32C; a damaged, unreadable or shrunken file stops the pager naming block and page, and the
/// toucher of such a page is never given anything.
/// </summary>
public sealed unsafe class SnapshotPagingTests : IDisposable
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);
    private readonly SavedSnapshot _snapshot = new();

    public void Dispose() => _snapshot.Dispose();

    /// <summary>
    /// A host thread reading one word of a page from inside a system call, as a vCPU does inside KVM_RUN (blocking
    /// until the pager places the page): a pwrite from the page into a scratch memfd. A failed read (the block gone)
    /// leaves ulong.MaxValue rather than an exception on a thread of its own.
    /// </summary>
    private static Thread Touch(RamBlock block, ulong page, ulong[] seen, int slot = 0)
    {
        var address = block.Mapping.Address + (nint)(page * Page.Size);
        var thread = new Thread(() =>
        {
            using var scratch = SafeFd.FromResult(Libc.MemfdCreate("toucher", Libc.MFD_CLOEXEC), "memfd_create");
            ulong value = ulong.MaxValue;
            if (Libc.PWrite(scratch.Fd, (void*)address, 8, 0) != 8 || Libc.PRead(scratch.Fd, &value, 8, 0) != 8)
                value = ulong.MaxValue;
            seen[slot] = value;
        }) { IsBackground = true };
        thread.Start();
        return thread;
    }

    private static void DisposeAll(RamBlock[] blocks)
    {
        foreach (var block in blocks)
            block.Dispose();
    }

    [Theory]
    [InlineData(RamBackend.Memfd)]
    [InlineData(RamBackend.Anonymous)]
    public void A_lazily_paged_snapshot_yields_the_saved_bytes_and_reads_each_present_page_once(RamBackend backend)
    {
        RamBlock[] blocks = [RamBlock.Create("ram-low", 0, 16 * MiB, 0, backend), RamBlock.Create("ram-high", 4UL << 30, 2 * MiB + 3 * Page.Size, 1, backend)];
        try
        {
            using (var file = SnapshotFile.Open(_snapshot.Path))
            {
                var loaded = file.PageInto(blocks);
                Assert.Equal(4, loaded.State.Count);
            }
            // The file object is gone: each block's source holds its own descriptor. Touch pages while the fill runs.
            var seen = new ulong[3];
            var touchers = new[] { Touch(blocks[0], 3005, seen, 0), Touch(blocks[1], 513, seen, 1), Touch(blocks[0], 100, seen, 2) };
            Assert.All(touchers, t => Assert.True(t.Join(Timeout)));
            Assert.All(blocks, b => Assert.True(b.Pager!.Completion.Wait(Timeout)));
            Assert.Equal(0UL, seen[2]); // page 100 is absent from the file: zero, resolved without reading
            AssertSameMemory(_snapshot.Saved, blocks);
            var stats = DemandPagingStatistics.Sum([.. blocks.Select(b => b.Pager!.Statistics())]);
            Assert.Equal(DemandPagingState.Complete, stats.State);
            Assert.Equal(53L, stats.PagesFetched);  // the 53 present pages, each read once
            Assert.Equal(53L, stats.SourcePages);
        }
        finally
        {
            DisposeAll(blocks);
        }
    }

    [Fact]
    public void A_bit_flipped_in_a_page_stops_the_pager_naming_block_and_page_and_the_toucher_gets_nothing()
    {
        var file = _snapshot.File;
        file.Flip(file.PageSlot(0, 3003) + 100);
        var blocks = SavedSnapshot.NewBlocks();
        using (var snapshot = SnapshotFile.Open(_snapshot.Path))
            snapshot.PageInto(blocks, new DemandPagingOptions { BackgroundFill = false });
        var seen = new ulong[1];
        Assert.True(Touch(blocks[0], 10, seen).Join(Timeout)); // a good page arrives
        var toucher = Touch(blocks[0], 3003, seen);
        var pager = blocks[0].Pager!;
        var error = Assert.IsType<DemandPagingException>(Assert.Throws<AggregateException>(() => pager.Completion.Wait(Timeout)).InnerException);
        Assert.Equal(("ram-low", 3003UL), (error.Block, error.Page));
        Assert.Contains("RAM block 'ram-low' page 3003", error.Message, StringComparison.Ordinal);
        Assert.Contains("page checksum mismatch", error.Message, StringComparison.Ordinal);
        Assert.Contains(_snapshot.Path, error.Message, StringComparison.Ordinal);
        Assert.False(toucher.Join(TimeSpan.FromMilliseconds(300)), "the toucher of the damaged page was given something");
        // The pages around it that were read with it in one group were not placed either.
        var neighbour = Touch(blocks[0], 3001, new ulong[1]);
        Assert.False(neighbour.Join(TimeSpan.FromMilliseconds(100)));
        pager.Dispose();
        Assert.True(toucher.Join(Timeout) && neighbour.Join(Timeout));
        DisposeAll(blocks);
    }

    [Fact]
    public void A_file_truncated_while_pages_are_owed_stops_the_pager_and_unlinking_it_does_not()
    {
        var blocks = SavedSnapshot.NewBlocks();
        using (var snapshot = SnapshotFile.Open(_snapshot.Path))
            snapshot.PageInto(blocks, new DemandPagingOptions { BackgroundFill = false });
        var pagesOffset = _snapshot.File.PagesOffset(0);
        // Unlinked: the pager holds the file open, pages keep arriving.
        File.Delete(_snapshot.Path);
        var seen = new ulong[1];
        Assert.True(Touch(blocks[0], 20, seen).Join(Timeout));
        Assert.NotEqual(0UL, seen[0]);
        // The same file truncated under the pager (through the descriptor it holds, as a writer elsewhere would): the
        // pages past the new end are refused, not read as zeros.
        var fd = Directory.GetFiles("/proc/self/fd").First(f => new FileInfo(f).LinkTarget == _snapshot.Path + " (deleted)");
        using (var handle = File.OpenHandle(fd, FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.SetLength(handle, pagesOffset + 3000L * Page.Size);
        var toucher = Touch(blocks[0], 3002, seen);
        var pager = blocks[0].Pager!;
        var error = Assert.IsType<DemandPagingException>(Assert.Throws<AggregateException>(() => pager.Completion.Wait(Timeout)).InnerException);
        Assert.Equal(3000UL, error.Page); // the first page of the group the fault read
        Assert.Contains("RAM block 'ram-low' page 3000", error.Message, StringComparison.Ordinal);
        Assert.Contains("truncated", error.Message, StringComparison.Ordinal);
        Assert.False(toucher.Join(TimeSpan.FromMilliseconds(300)), "the toucher of a page past the new end was given something");
        pager.Dispose();
        Assert.True(toucher.Join(Timeout));
        DisposeAll(blocks);
    }

    [Fact]
    public void A_file_that_shrank_before_the_fill_reached_its_end_fails_the_fill_naming_the_page()
    {
        using var snapshot = SnapshotFile.Open(_snapshot.Path);
        _snapshot.File.Truncate(_snapshot.File.PagesOffset(0) + 3000L * Page.Size);
        var blocks = SavedSnapshot.NewBlocks();
        try
        {
            snapshot.PageInto(blocks);
            var error = Assert.IsType<DemandPagingException>(Assert.Throws<AggregateException>(() => blocks[0].Pager!.Completion.Wait(Timeout)).InnerException);
            Assert.Equal(("ram-low", 3000UL), (error.Block, error.Page));
            Assert.Contains("truncated", error.Message, StringComparison.Ordinal);
            // The pages before it arrived.
            var seen = new ulong[1];
            Assert.True(Touch(blocks[0], 39, seen).Join(Timeout));
            Assert.NotEqual(0UL, seen[0]);
        }
        finally
        {
            foreach (var block in blocks)
                block.Pager?.Dispose();
            DisposeAll(blocks);
        }
    }

    [Fact]
    public void A_snapshot_saved_while_pages_are_still_owed_is_complete_and_correct()
    {
        using var dir = new TempDir();
        var again = dir.File("again.snap");
        var blocks = SavedSnapshot.NewBlocks();
        var reloaded = SavedSnapshot.NewBlocks();
        try
        {
            using (var snapshot = SnapshotFile.Open(_snapshot.Path))
                snapshot.PageInto(blocks, new DemandPagingOptions { BackgroundFill = false });
            // One page brought in and then changed (a guest write), the rest still owed when the save starts.
            var seen = new ulong[1];
            Assert.True(Touch(blocks[0], 5, seen).Join(Timeout));
            FillPages(_snapshot.Saved[0], 5, 1, 9);
            FillPages(blocks[0], 5, 1, 9);
            Assert.True(blocks.Sum(b => (long)b.Pager!.Statistics().PagesFetched) < 53);

            // The save reads every owed page through the mapping (its faults bring them in) on its own threads.
            SaveThroughEngine(again, blocks, SampleState(), threads: 2);
            using (var file = SnapshotFile.Open(again))
                file.LoadInto(reloaded, threads: 2);
            AssertSameMemory(_snapshot.Saved, reloaded);
        }
        finally
        {
            DisposeAll(blocks);
            DisposeAll(reloaded);
        }
    }
}
