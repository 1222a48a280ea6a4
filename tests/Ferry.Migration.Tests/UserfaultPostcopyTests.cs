using System.Collections.Concurrent;
using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// Postcopy into real demand-paged memory without KVM: <see cref="UserfaultPostcopyMemory"/> (what a destination
/// machine uses) over RAM blocks, with host threads in the place of vCPUs that read owed pages from inside a system
/// call, exactly as KVM reads guest memory for a vCPU inside KVM_RUN, and so block in the kernel until the page is
/// placed. First the seam alone, then the whole engine from a writing synthetic guest.
/// </summary>
public sealed unsafe class UserfaultPostcopyTests
{
    private const ulong MiB = 1UL << 20;
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(30);

    /// <summary>
    /// Host threads standing in for vCPUs: each reads the first word of its pages in turn through pwrite from the
    /// block's address into a scratch memfd (a page that is owed blocks the thread in the kernel until placed; a
    /// managed thread must not wait in a plain page fault, see <see cref="DemandPager"/>). Each knows its kernel
    /// thread id, so faults can be told apart by "vCPU".
    /// </summary>
    private sealed class KernelReaders
    {
        private readonly ConcurrentDictionary<int, int> _vcpuOfThread = new();
        private readonly List<Thread> _threads = [];

        public int VcpuOf(int tid) => _vcpuOfThread.TryGetValue(tid, out var vcpu) ? vcpu : -1;

        /// <summary>Starts "vCPU" <paramref name="vcpu"/> reading <paramref name="pages"/> of <paramref name="block"/>; word i of <paramref name="seen"/> gets page i's first word.</summary>
        public Thread Start(int vcpu, RamBlock block, ulong[] pages, ulong[] seen)
        {
            var address = block.Mapping.Address;
            var started = new ManualResetEventSlim();
            var thread = new Thread(() =>
            {
                _vcpuOfThread[Libc.GetTid()] = vcpu;
                started.Set();
                using var scratch = SafeFd.FromResult(Libc.MemfdCreate("reader", Libc.MFD_CLOEXEC), "memfd_create");
                for (var i = 0; i < pages.Length; i++)
                {
                    ulong value = ulong.MaxValue;
                    if (Libc.PWrite(scratch.Fd, (void*)(address + (nint)(pages[i] * Page.Size)), 8, 0) != 8 || Libc.PRead(scratch.Fd, &value, 8, 0) != 8)
                        value = ulong.MaxValue;
                    seen[i] = value;
                }
            }) { IsBackground = true, Name = $"reader-vcpu{vcpu}" };
            _threads.Add(thread);
            thread.Start();
            started.Wait();
            return thread;
        }

        public void JoinAll()
        {
            foreach (var thread in _threads)
                Assert.True(thread.Join(Timeout), $"{thread.Name} still blocked");
        }
    }

    private static ulong FirstWord(RamBlock block, ulong page) => BitConverter.ToUInt64(block.Mapping.GetSpan(page * Page.Size, 8));

    private static void FillPattern(Span<byte> page, ulong tag) => page.Fill((byte)(tag * 37 + 1));

    private static ulong PatternWord(ulong tag)
    {
        var b = (byte)(tag * 37 + 1);
        return 0x0101010101010101UL * b;
    }

    [Theory]
    [InlineData(RamBackend.Anonymous)]
    [InlineData(RamBackend.Memfd)]
    public void Owed_pages_wait_for_their_placement_and_everything_else_keeps_what_precopy_left(RamBackend backend)
    {
        using var block = RamBlock.Create("ram-low", 0, 8 * MiB, 0, backend);
        // Precopy left data in pages 0..1023; 1024.. were never written (holes).
        Span<byte> page = stackalloc byte[Page.Size];
        for (ulong p = 0; p < 1024; p++)
        {
            FillPattern(page, p);
            block.WriteAt(p * Page.Size, page);
        }
        var owed = new PageSet(block.PageCount);
        owed.AddRange(100, 50);   // stale data: dropped
        owed.AddRange(1500, 10);  // was a hole: owed all the same
        var readers = new KernelReaders();
        var memory = new UserfaultPostcopyMemory([block], vcpuCount: 2, readers.VcpuOf);
        string? failed = null;
        memory.Failed += m => failed = m;

        memory.MarkOwed(0, owed);

        // Kept: data pages outside the owed set, and holes outside it (zero, resolved without a fault report).
        ulong[] kept = [0, 99, 150, 1023, 1024, 1499, 2047];
        var keptSeen = new ulong[kept.Length];
        Assert.True(readers.Start(1, block, kept, keptSeen).Join(Timeout));
        Assert.Equal([PatternWord(0), PatternWord(99), PatternWord(150), PatternWord(1023), 0UL, 0UL, 0UL], keptSeen);
        Assert.False(memory.TryTakeFault(TimeSpan.FromMilliseconds(50), out _));

        // An owed page: the reader blocks, its fault comes out with its vCPU, the placement wakes it.
        var seen = new ulong[2];
        var reader = readers.Start(0, block, [120, 1505], seen);
        Assert.True(memory.TryTakeFault(Timeout, out var fault));
        Assert.Equal((0, 120UL, 0), (fault.Block, fault.Page, fault.Vcpu));
        Assert.False(reader.Join(100), "the reader ran on before its page was placed");
        FillPattern(page, 9_120);
        memory.Place(0, 120, page);
        Assert.True(memory.TryTakeFault(Timeout, out fault));
        Assert.Equal((0, 1505UL, 0), (fault.Block, fault.Page, fault.Vcpu));
        memory.PlaceZero(0, 1505, 1);
        Assert.True(reader.Join(Timeout));
        Assert.Equal([PatternWord(9_120), 0UL], seen);

        // The rest of the owed pages arrive in runs; the last one completes paging (the range is unregistered).
        var run = new byte[50 * Page.Size];
        for (var i = 0; i < 50; i++)
            FillPattern(run.AsSpan(i * Page.Size, Page.Size), 9_000 + 100 + (ulong)i);
        memory.Place(0, 100, run.AsSpan(0, 20 * Page.Size));
        memory.Place(0, 121, run.AsSpan(21 * Page.Size, 29 * Page.Size));
        memory.PlaceZero(0, 1500, 5);
        Assert.Equal(DemandPagingState.Paging, memory.Pagers[0].State);
        memory.PlaceZero(0, 1506, 4);
        memory.Complete();

        var pager = Assert.Single(memory.Pagers);
        Assert.Equal(DemandPagingState.Complete, pager.State);
        Assert.Null(failed);
        for (ulong p = 100; p < 150; p++)
            Assert.Equal(p == 120 ? PatternWord(9_120) : PatternWord(9_000 + p), FirstWord(block, p));
        for (ulong p = 1500; p < 1510; p++)
            Assert.Equal(0UL, FirstWord(block, p));
        Assert.Equal(PatternWord(151), FirstWord(block, 151));
        var stats = pager.Statistics();
        Assert.Equal(60L, stats.PagesWritten);
        Assert.Equal(2L, stats.SourceReads); // two faults reported, nothing ever read
        Assert.Equal(3L, stats.ZeroPagesByFaults); // the holes 1024, 1499 and 2047, resolved here
    }

    [Fact]
    public void A_balloon_inflating_over_owed_pages_while_they_are_owed_makes_them_zero_and_they_are_never_placed()
    {
        using var block = RamBlock.Create("ram-low", 0, 4 * MiB, 0, RamBackend.Anonymous);
        var owed = new PageSet(block.PageCount);
        owed.AddRange(0, 64);
        var memory = new UserfaultPostcopyMemory([block], 1, _ => -1);
        memory.MarkOwed(0, owed);

        block.Discard(0, 32 * Page.Size); // the guest gave [0, 32) back before they arrived
        var data = new byte[64 * Page.Size];
        data.AsSpan().Fill(0xAB);
        memory.Place(0, 0, data); // the engine does not know: only [32, 64) are still owed

        Assert.Equal(DemandPagingState.Complete, memory.Pagers[0].State);
        Assert.Equal(0UL, FirstWord(block, 0));
        Assert.Equal(0UL, FirstWord(block, 31));
        Assert.Equal(0xABABABABABABABABUL, FirstWord(block, 32));
        Assert.Equal(32L, memory.Pagers[0].Statistics().PagesWritten);
    }

    [Theory]
    [InlineData(RamBackend.Anonymous)]
    [InlineData(RamBackend.Memfd)]
    public void A_thread_waiting_on_an_owed_page_the_balloon_gives_back_wakes_and_reads_zero(RamBackend backend)
    {
        using var block = RamBlock.Create("ram-low", 0, 4 * MiB, 0, backend);
        var owed = new PageSet(block.PageCount);
        owed.AddRange(0, 64);
        var readers = new KernelReaders();
        var memory = new UserfaultPostcopyMemory([block], 1, readers.VcpuOf);
        memory.MarkOwed(0, owed);
        var seen = new ulong[1];
        var reader = readers.Start(0, block, [5], seen);
        Assert.True(memory.TryTakeFault(Timeout, out var fault)); // reported: the engine would ask the source for it
        Assert.Equal(5UL, fault.Page);

        block.Discard(0, 32 * Page.Size); // the guest's balloon takes [0, 32) before page 5 arrives

        Assert.True(reader.Join(Timeout), "the reader still waits for a page that will never be placed");
        Assert.Equal(0UL, seen[0]);
        Assert.Equal(DemandPagingState.Paging, memory.Pagers[0].State);
        memory.PlaceZero(0, 0, 64); // the engine does not know: only [32, 64) are placed
        Assert.Equal(DemandPagingState.Complete, memory.Pagers[0].State);
        Assert.Equal(32L, memory.Pagers[0].Statistics().PagesWritten);
    }

    [Fact]
    public void After_completion_pieces_split_by_owed_pages_or_a_hole_touched_meanwhile_are_huge_pages_again()
    {
        using var block = RamBlock.Create("ram-low", 0, 8 * MiB, 0, RamBackend.Anonymous);
        Span<byte> page = stackalloc byte[Page.Size];
        FillPattern(page, 1);
        for (ulong p = 0; p < 1024; p++)
            block.WriteAt(p * Page.Size, page); // pieces 0 and 1 hold data; 2 and 3 were never touched
        var owed = new PageSet(block.PageCount);
        owed.AddRange(600, 10); // splits piece 1
        var readers = new KernelReaders();
        var memory = new UserfaultPostcopyMemory([block], 1, readers.VcpuOf);
        memory.MarkOwed(0, owed);
        var seen = new ulong[1];
        Assert.True(readers.Start(0, block, [1100], seen).Join(Timeout)); // a hole in piece 2: a 4 KiB zero page

        var data = new byte[10 * Page.Size];
        memory.Place(0, 600, data);

        var pager = memory.Pagers[0];
        Assert.Equal(DemandPagingState.Complete, pager.State);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        while (pager.Statistics().PiecesCollapsed < 2 && clock.Elapsed < Timeout)
            Thread.Sleep(5); // collapsed on the pager's own thread, after completion
        var stats = pager.Statistics();
        Assert.Equal(2L, stats.PiecesCollapsed); // pieces 1 and 2; 0 and 3 were never split
        Assert.Equal(0L, stats.CollapseFailures);
    }

    [Fact]
    public void Blocks_owed_nothing_are_not_paged_and_a_placement_there_is_refused()
    {
        using var low = RamBlock.Create("ram-low", 0, 2 * MiB, 0, RamBackend.Anonymous);
        using var high = RamBlock.Create("ram-1", 1UL << 32, 2 * MiB, 1, RamBackend.Anonymous);
        var memory = new UserfaultPostcopyMemory([low, high], 1, _ => -1);
        var owed = new PageSet(high.PageCount);
        owed.Add(7);
        memory.MarkOwed(0, new PageSet(low.PageCount));
        memory.MarkOwed(1, owed);

        Assert.Null(low.Pager);
        Assert.NotNull(high.Pager);
        var e = Assert.Throws<InvalidOperationException>(() => memory.PlaceZero(0, 0, 1));
        Assert.Contains("ram-low", e.Message);
        memory.PlaceZero(1, 7, 1);
        memory.Complete();
        Assert.Equal(DemandPagingState.Complete, high.Pager!.State);
    }

    /// <summary>
    /// The whole engine: a synthetic guest rewrites its working set far faster than the link, the migration
    /// switches to postcopy after two passes, and on the destination two reader "vCPUs" read every page while the
    /// rest arrives. What they read, and the destination's memory at the end, must be the source's final memory.
    /// </summary>
    [Theory]
    [InlineData(RamBackend.Anonymous)]
    [InlineData(RamBackend.Memfd)]
    public void A_guest_dirtying_faster_than_the_bandwidth_completes_with_postcopy_into_demand_paged_memory(RamBackend backend)
    {
        using var vm = new SyntheticVm(backend, 32 * MiB);
        vm.Fill(0, 0, 2048, 1);
        vm.WorkingSet = (0, 1024);
        vm.PagesPerSecond = 50_000; // 200 MB/s of writes against 16 MiB/s of link
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var readers = new KernelReaders();
        var memory = new UserfaultPostcopyMemory(target.Blocks, 2, readers.VcpuOf);
        target.Postcopy = memory;
        var pages = Enumerable.Range(0, 4096).Select(i => (ulong)i).ToArray();
        var halves = new[] { pages.Where(p => p % 2 == 0).Reverse().ToArray(), pages.Where(p => p % 2 == 1).ToArray() };
        var seen = new[] { new ulong[halves[0].Length], new ulong[halves[1].Length] };
        target.GuestResumed += () =>
        {
            readers.Start(0, target.Blocks[0], halves[0], seen[0]);
            readers.Start(1, target.Blocks[0], halves[1], seen[1]);
        };
        var channels = new InMemoryChannels();
        var receiving = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None, TimeSpan.FromSeconds(5), new PostcopyIncoming()));
        var parameters = new MigrationParameters { MultifdChannels = 2, MaxBandwidth = (long)(16 * MiB), DowntimeLimitMs = 20, PostcopyAfterPasses = 2 };
        using var migration = new PrecopyMigration(vm, parameters, new MigrationCapabilities { PostcopyRam = true });

        var stats = migration.Run(channels);
        var report = receiving.GetAwaiter().GetResult();
        readers.JoinAll();

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        var postcopy = stats.Postcopy!;
        Assert.True(postcopy.OwedPages > 0);
        Assert.True(postcopy.Faults > 0, "the readers faulted on owed pages");
        Assert.Equal(2, postcopy.VcpuBlocktimeMs.Count);
        Assert.True(postcopy.VcpuBlocktimeMs.Sum() > 0, "blocked time was counted by vCPU");
        Assert.Equal(0, report.Postcopy!.DuplicatePages);
        Assert.All(memory.Pagers, p => Assert.Equal(DemandPagingState.Complete, p.State));
        // What each reader saw while pages were arriving is the source's final memory.
        for (var v = 0; v < 2; v++)
        {
            for (var i = 0; i < halves[v].Length; i++)
                Assert.Equal(FirstWord(vm.Blocks[0], halves[v][i]), seen[v][i]);
        }
        PrecopyEngineTests.AssertSameMemory(vm, target);
    }
}
