using System.Collections.Concurrent;
using Ferry.Interop;
using Ferry.Interop.Userfault;
using Ferry.Kvm;
using Ferry.Migration.Engine;

namespace Ferry.Migration.Machines;

/// <summary>
/// Postcopy's destination memory on real RAM blocks, through the memory layer's one demand-paging mechanism
/// (<see cref="DemandPager"/>). At the switch each block owed anything is demand-paged with its owed pages as a
/// pushed source (<see cref="IPushedPageSource"/>): the owed pages are dropped and registered MISSING with a
/// userfaultfd, every other page keeps what precopy put there (a hole among them reads zero, resolved by the pager
/// without asking anyone). A vCPU (inside KVM_RUN) or a VMM thread that touches an owed page not yet here blocks in
/// the kernel; its fault comes out of <see cref="TryTakeFault"/> with the vCPU's index (from the faulting thread's
/// id). <see cref="Place"/> and <see cref="PlaceZero"/> are UFFDIO_COPY and UFFDIO_ZEROPAGE, which wake it. When the
/// last owed page of a block is in place its range is unregistered and (anonymous memory) its split pieces are made
/// huge pages again.
/// <para>
/// A placement the kernel refuses (out of memory) fails that block's pager: <see cref="Failed"/> is raised with a
/// message naming block and page (the machine stops on it: its threads waiting for the page must not run on), and
/// the engine's placement throws.
/// </para>
/// </summary>
public sealed class UserfaultPostcopyMemory : IPostcopyMemory
{
    private readonly IReadOnlyList<RamBlock> _blocks;
    private readonly Func<int, int> _vcpuOfThread;
    private readonly DemandPager?[] _pagers;
    private readonly BlockingCollection<PostcopyFault> _faults = [];

    /// <param name="blocks">The destination's blocks, in the target's block order.</param>
    /// <param name="vcpuCount">How many vCPUs the guest has.</param>
    /// <param name="vcpuOfThread">The vCPU index running on a kernel thread id, or -1 (a VMM thread, or unknown).</param>
    public UserfaultPostcopyMemory(IReadOnlyList<RamBlock> blocks, int vcpuCount, Func<int, int> vcpuOfThread)
    {
        _blocks = blocks;
        VcpuCount = vcpuCount;
        _vcpuOfThread = vcpuOfThread;
        _pagers = new DemandPager?[blocks.Count];
    }

    public int VcpuCount { get; }

    /// <summary>A block's pager failed (the message names block and page). Raised once per block, on a pool thread.</summary>
    public event Action<string>? Failed;

    /// <summary>The pagers of the blocks that were owed pages (empty before the switch).</summary>
    public IReadOnlyList<DemandPager> Pagers => [.. _pagers.OfType<DemandPager>()];

    /// <summary>
    /// Whether these blocks can be demand-paged on this host: a userfaultfd can be opened (/dev/userfaultfd or the
    /// system call) and, for memfd blocks, pages shared memory. Null when they can; otherwise why not.
    /// </summary>
    public static string? Unavailable(IReadOnlyList<RamBlock> blocks)
    {
        try
        {
            // The pager's own check, said here at setup rather than at the switch.
            DemandPager.CheckAvailable(shmem: blocks.Any(b => b.Backend == RamBackend.Memfd));
            return null;
        }
        catch (ErrnoException e)
        {
            return e.Message;
        }
    }

    public void MarkOwed(int block, PageSet owed)
    {
        if (owed.Count() == 0)
            return; // nothing owed: the block is complete as precopy left it
        var ram = _blocks[block];
        var present = new PageSet(ram.PageCount);
        present.AddRange(0, ram.PageCount);
        present.RemoveAll(owed);
        var source = new OwedPages(this, block, ram.Name, owed);
        var pager = ram.BeginDemandPaging(source, new DemandPagingOptions { BackgroundFill = false, Present = present });
        _pagers[block] = pager;
        pager.Completion.ContinueWith(t => Failed?.Invoke(t.Exception!.InnerExceptions[0].Message),
            CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
    }

    public void Place(int block, ulong firstPage, ReadOnlySpan<byte> pages) => PagerOf(block).Place(firstPage, pages);

    public void PlaceZero(int block, ulong firstPage, ulong count) => PagerOf(block).PlaceZero(firstPage, count);

    public bool TryTakeFault(TimeSpan timeout, out PostcopyFault fault) => _faults.TryTake(out fault, timeout);

    /// <summary>Every owed page was placed: each block's pager completed with its last one (the range is unregistered).</summary>
    public void Complete()
    {
        foreach (var pager in _pagers)
        {
            if (pager is not null && pager.State != DemandPagingState.Complete)
                throw new InvalidOperationException($"RAM block '{pager.Block}': postcopy ended with its paging {pager.State}{(pager.Error is { } e ? ": " + e : "")}");
        }
    }

    private DemandPager PagerOf(int block) =>
        _pagers[block] ?? throw new InvalidOperationException($"RAM block '{_blocks[block].Name}' was owed no pages, yet one was placed");

    /// <summary>A block's owed pages as the pager sees them: pushed in by the engine; a fault on one becomes a <see cref="PostcopyFault"/>.</summary>
    private sealed class OwedPages(UserfaultPostcopyMemory owner, int block, string name, PageSet owed) : IPushedPageSource
    {
        public string Description => $"the migration source (postcopy, RAM block '{name}')";

        public PageSet DataPages => owed;

        public PageSet? BalloonedPages => null;

        public void ReadPages(ulong firstPage, ulong count, Span<byte> into) =>
            throw new InvalidOperationException("postcopy pages are pushed in by the migration, never read");

        public void Faulted(ulong page, long timestamp, int threadId) =>
            owner._faults.Add(new PostcopyFault(block, page, timestamp, threadId == 0 ? -1 : owner._vcpuOfThread(threadId)));
    }
}
