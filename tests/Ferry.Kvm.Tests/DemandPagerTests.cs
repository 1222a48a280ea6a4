using Ferry.Interop;
using Xunit;

namespace Ferry.Kvm.Tests;

/// <summary>
/// The demand pager without KVM: plain host threads touch a block that is "empty but owed" and block in the fault
/// until the pager's handler places the page, exactly as a vCPU would inside KVM_RUN. The source counts every page
/// it is asked for, so the tests prove what was fetched, how often, and what was resolved without asking.
/// </summary>
public sealed unsafe class DemandPagerTests
{
    private const ulong MiB = 1 << 20;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// 8 MiB (2048 pages, four pieces): piece 0 mostly data (every page but each 7th), piece 1 data in its first half,
    /// piece 2 holds nothing (zero, never touched), piece 3 one lone data page; pages 800..809 ballooned.
    /// </summary>
    private static PatternSource Layout(ulong pages) => new(pages,
        p => (p < 512 && p % 7 != 0) || (p >= 512 && p < 768) || p == pages - 3,
        p => p is >= 800 and < 810);

    private static RamBlock NewBlock(RamBackend backend, ulong size = 8 * MiB) => RamBlock.Create("ram-test", 0, size, 0, backend);

    /// <summary>Every page: a data page holds its pattern, every other page reads zero.</summary>
    private static void AssertContents(RamBlock block, PatternSource source)
    {
        Span<byte> want = stackalloc byte[Page.Size];
        for (ulong p = 0; p < block.PageCount; p++)
        {
            var have = block.Mapping.GetSpan(p * Page.Size, Page.Size);
            if (source.DataPages.Contains(p))
            {
                PatternSource.Pattern(p, want);
                Assert.True(have.SequenceEqual(want), $"data page {p} does not hold its contents");
            }
            else
            {
                Assert.False(have.ContainsAnyExcept((byte)0), $"page {p} is not zero");
            }
        }
    }

    /// <summary>
    /// A host thread that reads one word of each page in turn, blocking in the fault until the page is placed. It
    /// reads the way a vCPU does, from inside a system call (pwrite from the owed address into a scratch memfd, as
    /// KVM reads guest memory inside KVM_RUN): a managed thread blocked in a plain page fault could not be suspended
    /// by the garbage collector (see <see cref="DemandPager"/>). A failed read (the block gone) leaves ulong.MaxValue
    /// rather than an exception on a thread of its own.
    /// </summary>
    internal static Thread Toucher(RamBlock block, ulong[] pages, ulong[] seen)
    {
        var address = block.Mapping.Address;
        var thread = new Thread(() =>
        {
            using var scratch = SafeFd.FromResult(Libc.MemfdCreate("toucher", Libc.MFD_CLOEXEC), "memfd_create");
            for (var i = 0; i < pages.Length; i++)
            {
                ulong value = ulong.MaxValue;
                if (Libc.PWrite(scratch.Fd, (void*)(address + (nint)(pages[i] * Page.Size + 8)), 8, 0) != 8 || Libc.PRead(scratch.Fd, &value, 8, 0) != 8)
                    value = ulong.MaxValue;
                seen[i] = value;
            }
        }) { IsBackground = true, Name = "toucher" };
        thread.Start();
        return thread;
    }

    private static ulong Expected(PatternSource source, ulong page) => source.DataPages.Contains(page) ? PatternSource.Word(page, 1) : 0;

    [Theory]
    [InlineData(RamBackend.Anonymous)]
    [InlineData(RamBackend.Memfd)]
    public void Every_page_arrives_with_its_contents_and_each_data_page_is_fetched_once(RamBackend backend)
    {
        using var block = NewBlock(backend);
        // Boot set-up had written something: it is dead once the block is owed.
        block.Mapping.GetSpan(3 * Page.Size, 16).Fill(0xEE);
        var source = Layout(block.PageCount);
        source.FillDelay = TimeSpan.FromMilliseconds(2);
        var pager = block.BeginDemandPaging(source);
        var touched = new ulong[] { 1, 3, 805, 1500, 2045, 700, 0, 2047 };
        var seen = new ulong[touched.Length];
        var toucher = Toucher(block, touched, seen);
        Assert.True(toucher.Join(Timeout));
        Assert.True(pager.Completion.Wait(Timeout));

        for (var i = 0; i < touched.Length; i++)
            Assert.Equal(Expected(source, touched[i]), seen[i]);
        AssertContents(block, source);
        var data = source.DataPages.Count();
        Assert.Equal(data, source.PagesRequested());
        Assert.Equal(0UL, source.PagesRequestedMoreThanOnce());
        var stats = pager.Statistics();
        Assert.Equal(DemandPagingState.Complete, stats.State);
        Assert.Equal((long)data, stats.PagesFetched);
        Assert.Equal(stats.SourcePages, stats.PagesFetched);
        Assert.True(stats.Faults >= 1, $"{stats.Faults} faults");
        Assert.True(stats.FillMs > 0);
    }

    [Fact]
    public void Zero_never_touched_and_ballooned_pages_are_resolved_without_asking_the_source()
    {
        using var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        // No fill: only faults bring pages in, so every resolution below is a fault's.
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false });
        // 1100: piece 2, never touched; 800, 805: ballooned; 900, 1000: zero in piece 1. No data page shares their
        // 16-page groups, so nothing at all is fetched.
        ulong[] touched = [1100, 800, 805, 900, 1000];
        var seen = new ulong[touched.Length];
        Assert.True(Toucher(block, touched, seen).Join(Timeout));

        Assert.All(seen, v => Assert.Equal(0UL, v));
        Assert.Equal(0L, source.Reads);
        var stats = pager.Statistics();
        Assert.Equal(0L, stats.SourcePages);
        Assert.Equal(2L, stats.BalloonedPagesResolved);
        // Around a zero page of a huge-page block its whole 16-page group is zero-filled (ballooned pages excepted):
        // the groups of 1100, 900 and 1000, and 810..815 next to 800.
        Assert.Equal(16L + 16 + 16 + 6, stats.ZeroPagesByFaults);
        Assert.Equal(5L, stats.Faults);
        Assert.Equal(DemandPagingState.Paging, stats.State);
    }

    [Fact]
    public void On_a_memfd_a_fault_on_a_zero_page_takes_only_that_page_and_no_data()
    {
        using var block = NewBlock(RamBackend.Memfd);
        var source = Layout(block.PageCount);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false });
        ulong[] touched = [1100, 900];
        var seen = new ulong[touched.Length];
        Assert.True(Toucher(block, touched, seen).Join(Timeout));
        Assert.All(seen, v => Assert.Equal(0UL, v));
        var stats = pager.Statistics();
        Assert.Equal((2L, 0L), (stats.ZeroPagesByFaults, stats.SourcePages));
    }

    [Theory]
    [InlineData(RamBackend.Anonymous)]
    [InlineData(RamBackend.Memfd)]
    public void Faults_and_the_fill_racing_over_the_same_pieces_place_every_page_once(RamBackend backend)
    {
        using var block = NewBlock(backend, 16 * MiB);
        var source = new PatternSource(block.PageCount, p => p % 5 != 0 || p % 512 == 0);
        // The fill reads slowly, so the touchers overtake it in the pieces it is working on.
        source.FillDelay = TimeSpan.FromMilliseconds(3);
        var pager = block.BeginDemandPaging(source);
        var touchers = new List<(Thread Thread, ulong[] Pages, ulong[] Seen)>();
        for (var t = 0; t < 4; t++)
        {
            var random = new Random(42 + t);
            var pages = Enumerable.Range(0, 400).Select(_ => (ulong)random.Next((int)block.PageCount)).ToArray();
            var seen = new ulong[pages.Length];
            touchers.Add((Toucher(block, pages, seen), pages, seen));
        }
        foreach (var (thread, pages, seen) in touchers)
        {
            Assert.True(thread.Join(Timeout));
            for (var i = 0; i < pages.Length; i++)
                Assert.Equal(Expected(source, pages[i]), seen[i]);
        }
        Assert.True(pager.Completion.Wait(Timeout));
        AssertContents(block, source);
        Assert.Equal(source.DataPages.Count(), source.PagesRequested());
        Assert.Equal(0UL, source.PagesRequestedMoreThanOnce());
        var stats = pager.Statistics();
        Assert.True(stats.PagesFetchedByFaults > 0 && stats.PagesFetchedByFill > 0, $"faults {stats.PagesFetchedByFaults}, fill {stats.PagesFetchedByFill}");
        Assert.Equal((long)source.DataPages.Count(), stats.PagesFetched);
    }

    public static TheoryData<string, bool> FailureKinds => new()
    {
        { "read error: Input/output error", false },
        { "truncated: the file ends at byte 12288", false },
        { "page checksum mismatch (stored 0x1234ABCD, computed 0x00000000)", false },
        { "read error: Input/output error", true },
        { "page checksum mismatch (stored 0x1234ABCD, computed 0x00000000)", true },
    };

    [Theory]
    [MemberData(nameof(FailureKinds))]
    public void A_failing_source_fails_the_pager_naming_block_and_page_and_never_feeds_the_toucher_zeros(string failure, bool fillFirst)
    {
        var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        source.FailAt = 521;
        source.FailMessage = failure;
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = fillFirst });
        if (fillFirst)
            Assert.Throws<AggregateException>(() => pager.Completion.Wait(Timeout));
        var seen = new ulong[1];
        var toucher = Toucher(block, [521], seen);
        if (!fillFirst)
            Assert.Throws<AggregateException>(() => pager.Completion.Wait(Timeout));

        var error = Assert.IsType<DemandPagingException>(pager.Completion.Exception!.InnerException);
        Assert.Equal(("ram-test", 521UL), (error.Block, error.Page));
        Assert.Contains("RAM block 'ram-test' page 521", error.Message, StringComparison.Ordinal);
        Assert.Contains(failure, error.Message, StringComparison.Ordinal);
        Assert.Equal(DemandPagingState.Failed, pager.State);
        Assert.Equal(error.Message, pager.Statistics().Error);
        // The toucher stays blocked: it is not given zeros (nor anything else) while the pager is failed.
        Assert.False(toucher.Join(TimeSpan.FromMilliseconds(300)), "the toucher got a page the source failed to deliver");
        // Another page that is not in place: its toucher waits too, and the fault is counted as left waiting. (In the
        // failed read's run: with one fill thread per core, pieces after the failing one may be in place already.)
        var other = Toucher(block, [700], new ulong[1]);
        Assert.False(other.Join(TimeSpan.FromMilliseconds(200)));
        Assert.True(pager.Statistics().FaultsLeftWaiting >= 1);
        // Only the owner ends it: disposing releases the waiters, then the block goes.
        pager.Dispose();
        Assert.True(toucher.Join(Timeout) && other.Join(Timeout));
        block.Dispose();
    }

    [Fact]
    public void Dispose_with_threads_blocked_in_faults_returns_and_releases_them()
    {
        var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        source.FillDelay = TimeSpan.FromMilliseconds(20);
        source.Gate.Reset(); // every read waits: the faulting threads stay blocked
        var pager = block.BeginDemandPaging(source);
        // 100 lies in the piece the fill is reading, 520 is read by the handler; both reads wait on the gate.
        var touchers = new ulong[] { 100, 520, 900, 1300 }.Select(p => Toucher(block, [p], new ulong[1])).ToArray();
        Assert.False(touchers[0].Join(TimeSpan.FromMilliseconds(200)));
        var disposing = Task.Run(pager.Dispose);
        Thread.Sleep(50);
        source.Gate.Set(); // the reads in progress finish; nothing new is started
        Assert.True(disposing.Wait(Timeout), "Dispose did not return");
        Assert.All(touchers, t => Assert.True(t.Join(Timeout), "a toucher stayed blocked after Dispose"));
        Assert.Equal(DemandPagingState.Stopped, pager.State);
        Assert.True(pager.Completion.IsCanceled);
        block.Dispose();
    }

    [Fact]
    public void A_complete_piece_of_anonymous_memory_becomes_a_huge_page_again()
    {
        using var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        var pager = block.BeginDemandPaging(source);
        Assert.True(pager.Completion.Wait(Timeout));
        var stats = pager.Statistics();
        // Pieces 0 (data, no balloon) and 3 (one data page: its zero pages are copied in too) become huge pages (moved
        // in whole where the kernel has UFFDIO_MOVE, else collapsed); piece 1 holds ballooned pages and stays 4 KiB
        // pages; piece 2 held nothing and was left to the kernel.
        Assert.Equal((2L, 1L), (stats.PiecesMadeHuge, stats.PiecesLeftEmpty));
        Assert.Equal(0L, stats.MoveFailures + stats.CollapseFailures);
        // Linux 6.8 and later (these hosts run 6.18): both pieces were untouched, so both were moved in whole.
        Assert.True(stats.PiecesMoved == 2, $"{stats.PiecesMoved} pieces moved in whole: does this kernel lack UFFDIO_MOVE (Linux 6.8)?");
        Assert.Equal(2 * (long)Page.ChunkSize, HugePages.MappedBytes(block.Mapping.Address));
        AssertContents(block, source);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_fault_on_a_given_back_page_still_places_the_pages_it_claimed_around_it(bool fill)
    {
        using var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = fill });
        block.Discard(Page.Size, Page.Size); // data page 1 given back (the balloon), then touched (deflated and reused)
        ulong[] touched = [1, 2, 3];         // its group's other pages were claimed by that fault: they must arrive
        var seen = new ulong[touched.Length];

        Assert.True(Toucher(block, touched, seen).Join(Timeout), "a page claimed beside the given-back one never arrived");

        Assert.Equal([0UL, Expected(source, 2), Expected(source, 3)], seen);
        if (fill)
        {
            Assert.True(pager.Completion.Wait(Timeout));
            Assert.Equal(DemandPagingState.Complete, pager.State);
        }
    }

    [Fact]
    public void A_discard_while_paging_makes_pages_read_zero_and_they_are_never_fetched()
    {
        using var block = NewBlock(RamBackend.Anonymous);
        var source = Layout(block.PageCount);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false });
        // Pages 520..529 hold data in the source; discard them (the balloon inflating) before anything touches them.
        block.Discard(520 * Page.Size, 10 * Page.Size);
        var seen = new ulong[3];
        Assert.True(Toucher(block, [520, 525, 529], seen).Join(Timeout));
        Assert.All(seen, v => Assert.Equal(0UL, v));
        for (ulong p = 520; p < 530; p++)
            Assert.Equal(0, source.Requests(p));
        Assert.Equal(3L, pager.Statistics().DiscardedPagesResolved);
        // A page placed, then discarded, then touched again reads zero as well.
        Assert.True(Toucher(block, [1], new ulong[1]).Join(Timeout));
        block.Discard(Page.Size, Page.Size);
        var again = new ulong[1];
        Assert.True(Toucher(block, [1], again).Join(Timeout));
        Assert.Equal(0UL, again[0]);
        Assert.Equal(1, source.Requests(1));
    }

    [Fact]
    public void Writes_while_paging_place_pages_nobody_claimed_without_fetching_them_and_complete_paging()
    {
        using var block = NewBlock(RamBackend.Memfd, 2 * MiB);
        var source = new PatternSource(block.PageCount, p => p < 64);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false });
        // Page 5 is fetched by a fault first; then all 64 data pages are written (what postcopy's stream does).
        var seen = new ulong[1];
        Assert.True(Toucher(block, [5], seen).Join(Timeout));
        var data = new byte[64 * Page.Size];
        for (ulong p = 0; p < 64; p++)
            PatternSource.Pattern(p, data.AsSpan((int)p * Page.Size, Page.Size));
        data[20 * Page.Size] ^= 0xFF; // the written copy of page 20 differs from the source: the write wins
        block.WriteAt(0, data);
        Assert.True(pager.Completion.Wait(Timeout));
        Assert.Equal(DemandPager.FaultAroundPages, (int)source.PagesRequested()); // the fault's group, nothing else
        Assert.True(block.Mapping.GetSpan(0, data.Length).SequenceEqual(data));
        Assert.Equal(64L - DemandPager.FaultAroundPages, pager.Statistics().PagesWritten);
    }

    [Fact]
    public void Pages_already_present_are_kept_and_never_fetched()
    {
        using var block = NewBlock(RamBackend.Anonymous, 2 * MiB);
        block.Mapping.GetSpan(0, 4 * Page.Size).Fill(0x77);
        var present = new PageSet(block.PageCount);
        present.AddRange(0, 4);
        var source = new PatternSource(block.PageCount, p => p < 32);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { Present = present });
        Assert.True(pager.Completion.Wait(Timeout));
        Assert.False(block.Mapping.GetSpan(0, 4 * Page.Size).ContainsAnyExcept((byte)0x77));
        Assert.Equal(28UL, source.PagesRequested());
        Assert.Equal(0, source.Requests(0));
    }

    [Fact]
    public void Data_extents_while_paging_include_owed_pages_and_reading_them_brings_them_in()
    {
        using var block = NewBlock(RamBackend.Memfd, 4 * MiB);
        var source = new PatternSource(block.PageCount, p => p is >= 10 and < 20 or 700);
        var pager = block.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false });
        Assert.Equal(new[] { (10 * (ulong)Page.Size, 10 * (ulong)Page.Size), (700 * (ulong)Page.Size, (ulong)Page.Size) }, block.DataExtents().ToArray());
        var page = new byte[Page.Size];
        var want = new byte[Page.Size];
        PatternSource.Pattern(700, want);
        block.EnsureResident(700 * Page.Size, Page.Size); // brings it in from a system call: then it can be read
        block.Mapping.GetSpan(700 * Page.Size, Page.Size).CopyTo(page);
        Assert.Equal(want, page);
        Assert.Equal(DemandPagingState.Paging, pager.State);
    }

    [Fact]
    public void The_latency_histogram_reports_percentiles_within_an_eighth_of_an_octave()
    {
        var histogram = new LatencyHistogram();
        Assert.Equal(TimeSpan.Zero, histogram.Percentile(50));
        for (var i = 1; i <= 1000; i++)
            histogram.Record(i * 1000L); // 1 µs .. 1 ms
        Assert.Equal(1000, histogram.Count);
        Assert.InRange(histogram.Percentile(50).TotalMicroseconds, 500, 500 * 1.125 + 1);
        Assert.InRange(histogram.Percentile(99).TotalMicroseconds, 990, 990 * 1.125 + 1);
        Assert.Equal(1000, histogram.Max.TotalMicroseconds, 3);
        Assert.Equal(1000, histogram.Percentile(100).TotalMicroseconds, 3);
        Assert.Equal(500.5, histogram.Total.TotalMilliseconds, 3);
    }
}
