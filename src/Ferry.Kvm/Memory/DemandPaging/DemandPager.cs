using System.Diagnostics;
using Ferry.Interop;
using Ferry.Interop.Userfault;

namespace Ferry.Kvm;

/// <summary>
/// The one demand-paging mechanism: a RAM block that is "empty but owed" (<see cref="RamBlock.BeginDemandPaging"/>).
/// Its range is registered with a userfaultfd in MISSING mode, so the first touch of a page that is not in place
/// (by a vCPU inside KVM_RUN, or by any VMM thread) blocks the toucher and reports the page here. A fault-handler
/// thread resolves it from the <see cref="IPageSource"/> (with the rest of its aligned 64 KiB group, so a
/// sequential reader faults once per group), and fill threads (one per core, at most 4) bring everything else in,
/// taking 2 MiB pieces in order, skipping what is already in place; the last one unregisters the range: the block is
/// then its plain backing again.
/// <para>
/// Every page is fetched once: a page is <em>claimed</em> (taken out of the unclaimed set, atomically per word)
/// before it is fetched, and only its claimer fetches and places it; a fault on a page someone else claimed simply
/// waits for that claimer's UFFDIO_COPY, which wakes it. Pages the source does not hold are zero and are resolved
/// here without asking it (zero-filled, or UFFDIO_ZEROPAGE for ballooned and discarded pages), counted per class.
/// </para>
/// <para>
/// Huge pages (anonymous memory): UFFDIO_COPY places 4 KiB pages even in a MADV_HUGEPAGE range, and MADV_COLLAPSE
/// refuses a range under userfaultfd that has a missing or zero-page entry. So the fill copies the zero pages of a
/// piece that holds data too (a real, zeroed page each) and then collapses the complete piece into one huge page
/// (measured on Linux 6.18: AnonHugePages goes from 0 to 2048 kB per piece); a piece with no data that nothing
/// touched is left alone, and after the range is unregistered the kernel gives it a huge page on first touch.
/// Where the kernel has UFFDIO_MOVE (Linux 6.8), a piece the fill claimed whole is read into a huge page of the
/// fill's own and moved in: no second copy, and the collapse that follows only confirms the huge page
/// (<see cref="MoveWholePiece"/>).
/// </para>
/// <para>
/// Pushed pages (<see cref="IPushedPageSource"/>, postcopy): nothing is read and there is no fill; whoever receives
/// the owed pages places them (<see cref="Place"/>, <see cref="PlaceZero"/>), and a fault on one that has not arrived
/// is reported to the source (with the faulting thread's id) instead of being resolved here. The block keeps every
/// page outside the owed set as it was (<see cref="DemandPagingOptions.Present"/>); a hole among those reads zero.
/// </para>
/// <para>
/// Failure: when the source cannot deliver a page (I/O error, short read, bad checksum) the pager stops placing
/// pages and <see cref="Completion"/> faults with a <see cref="DemandPagingException"/> naming the block and page.
/// A thread touching a page that is not in place then stays blocked (it is never given zeros); a vCPU blocked so is
/// taken out by its kick signal (KVM_RUN returns EINTR), see docs/snapshots.md. Closing the userfaultfd releases
/// every waiter with zero-filled memory, so <see cref="Dispose"/> must come after every thread that could be
/// waiting is gone (a machine joins its vCPU threads before it disposes its memory).
/// </para>
/// </summary>
public sealed unsafe partial class DemandPager : IDisposable
{
    /// <summary>Pages a fault brings in around the faulting one (an aligned 64 KiB group).</summary>
    public const int FaultAroundPages = 16;

    private const int MessageBatch = 32;

    private readonly string _block;
    private readonly MappedRegion _mapping;
    private readonly IPageSource _source;
    private readonly IPushedPageSource? _pushed;
    private readonly PageSet _data;
    private readonly PageSet? _ballooned;
    private readonly ulong _pageCount;
    private readonly bool _hugePages;
    private readonly UserfaultFd _uffd;
    private readonly SafeFd _stopEvent;

    /// <summary>Pages nobody has taken responsibility for yet; taking pages out of it is how they are claimed.</summary>
    private readonly PageSet _unclaimed;

    /// <summary>Pages placed (copied, zeroed, or found present).</summary>
    private readonly PageSet _placed;

    /// <summary>Pages given back since paging began: they read zero and are never fetched.</summary>
    private readonly PageSet _discarded;

    /// <summary>Pieces made one huge page.</summary>
    private readonly bool[] _collapsed;

    /// <summary>Pieces where a hole was resolved with a 4 KiB zero page (pushed pages): made huge pages again at completion.</summary>
    private readonly bool[] _holesResolved;

    /// <summary>
    /// Shared by every placing (faults, fill, writes), exclusive for a discard and for completion: a discard must not
    /// land between a fetch and its copy, and the range must not be unregistered while a copy is on its way.
    /// </summary>
    private readonly ReaderWriterLockSlim _gate = new(LockRecursionPolicy.NoRecursion);

    private readonly TaskCompletionSource _completion = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly LatencyHistogram _faultLatency = new();
    private readonly Thread _handler;
    private readonly Thread[]? _fill;
    private long _nextPiece = -1;
    private int _fillsRunning;
    private Thread? _collapser;

    /// <summary>The fill places a whole piece by UFFDIO_MOVE from a huge page of its own (set at start).</summary>
    private bool _movesPieces;

    private int _state = (int)DemandPagingState.Paging;
    private int _stopping;
    private string? _error;
    private long _dataOutstanding;
    private long _faults, _faultsInFlight, _faultsLeftWaiting, _fetchedByFaults, _fetchedByFill, _written;
    private long _zeroByFaults, _zeroByFill, _balloonedResolved, _discardedResolved, _sourceReads, _sourcePages;
    private long _piecesFilled, _piecesAlreadyResolved, _piecesLeftEmpty, _piecesCollapsed, _collapseFailures, _piecesMoved, _moveFailures;
    private long _fillStarted, _fillEnded;
    private int _sourceReleased;

    private DemandPager(string block, MappedRegion mapping, IPageSource source, PageSet? present, bool hugePages, bool backgroundFill, UserfaultFd uffd, SafeFd stopEvent)
    {
        _block = block;
        _mapping = mapping;
        _source = source;
        _pushed = source as IPushedPageSource;
        _data = source.DataPages;
        _ballooned = source.BalloonedPages;
        _pageCount = mapping.Length >> Page.Shift;
        _hugePages = hugePages;
        _uffd = uffd;
        _stopEvent = stopEvent;
        _unclaimed = new PageSet(_pageCount);
        _unclaimed.AddRange(0, _pageCount);
        _placed = new PageSet(_pageCount);
        _discarded = new PageSet(_pageCount);
        _collapsed = new bool[Page.ChunksFor(_pageCount)];
        _holesResolved = new bool[_collapsed.Length];
        if (present is not null)
        {
            _unclaimed.RemoveAll(present);
            _placed.CopyFrom(present);
        }
        // The data pages still owed: completion waits for this to reach zero.
        foreach (var run in _data.Runs())
        {
            for (var p = run.Start; p < run.End; p++)
            {
                if (!_placed.Contains(p))
                    _dataOutstanding++;
            }
        }
        _handler = new Thread(HandleFaults) { Name = $"ferry-pager-fault:{block}", IsBackground = true };
        if (backgroundFill)
        {
            // One fill thread per core, at most 4, taking pieces in order from a shared counter.
            _fill = [.. Enumerable.Range(0, Math.Clamp(Environment.ProcessorCount, 1, 4))
                .Select(i => new Thread(Fill) { Name = $"ferry-pager-fill{i}:{block}", IsBackground = true })];
            _fillsRunning = _fill.Length;
        }
    }

    /// <summary>The block's name.</summary>
    public string Block => _block;

    /// <summary>Pages in the block.</summary>
    public ulong PageCount => _pageCount;

    public DemandPagingState State => (DemandPagingState)Volatile.Read(ref _state);

    /// <summary>The failure, naming block and page (null unless <see cref="State"/> is Failed).</summary>
    public string? Error => Volatile.Read(ref _error);

    /// <summary>
    /// Completes when every owed page is in place; faults with a <see cref="DemandPagingException"/> when the source
    /// failed; cancelled when the pager was disposed first.
    /// </summary>
    public Task Completion => _completion.Task;

    /// <summary>How the userfaultfd was made (/dev/userfaultfd or the system call).</summary>
    public string OpenedVia => _uffd.OpenedVia;

    /// <summary>
    /// Opens a userfaultfd, has <paramref name="empty"/> give back every page of <paramref name="mapping"/> outside
    /// <paramref name="present"/>, registers the range and starts the threads. Throws an <see cref="ErrnoException"/>
    /// when userfaultfd is unavailable, before anything is emptied.
    /// </summary>
    internal static DemandPager Start(string block, MappedRegion mapping, IPageSource source, PageSet? present, Action empty, bool hugePages, bool backgroundFill, bool shmem)
    {
        if (backgroundFill && source is IPushedPageSource)
            throw new ArgumentException($"RAM block '{block}': pages that are pushed in are not filled in the background", nameof(backgroundFill));
        // The faulting thread's id comes with each fault (postcopy counts vCPUs' blocked time by it).
        var features = UffdConstants.UFFD_FEATURE_THREAD_ID | (shmem ? UffdConstants.UFFD_FEATURE_MISSING_SHMEM : 0);
        UserfaultFd uffd;
        var movesPieces = false;
        if (hugePages && backgroundFill && !shmem)
        {
            // The fill moves whole pieces in as huge pages where the kernel can (UFFDIO_MOVE, Linux 6.8).
            try
            {
                uffd = UserfaultFd.Open(features | UffdConstants.UFFD_FEATURE_MOVE);
                movesPieces = true;
            }
            catch (ErrnoException)
            {
                uffd = UserfaultFd.Open(features);
            }
        }
        else
        {
            uffd = UserfaultFd.Open(features);
        }
        SafeFd? stopEvent = null;
        try
        {
            CheckShmem(uffd, shmem);
            stopEvent = SafeFd.FromResult(Libc.EventFd(0, Libc.EFD_CLOEXEC | Libc.EFD_NONBLOCK), "eventfd");
            empty();
            uffd.Register(mapping.Address, mapping.Length);
            var pager = new DemandPager(block, mapping, source, present, hugePages, backgroundFill, uffd, stopEvent) { _movesPieces = movesPieces };
            pager._handler.Start();
            pager._fillStarted = Stopwatch.GetTimestamp();
            foreach (var fill in pager._fill ?? [])
                fill.Start();
            if (pager._fill is null && pager._dataOutstanding == 0)
                pager.TryComplete();
            return pager;
        }
        catch
        {
            stopEvent?.Dispose();
            uffd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Throws the <see cref="ErrnoException"/> <see cref="Start"/> would, naming why, when a block cannot be demand-paged
    /// on this host (no userfaultfd, or <paramref name="shmem"/> memory the kernel cannot page): for a caller that must
    /// decide before anything exists (a postcopy destination declines postcopy at setup).
    /// </summary>
    public static void CheckAvailable(bool shmem)
    {
        using var uffd = UserfaultFd.Open(UffdConstants.UFFD_FEATURE_THREAD_ID);
        CheckShmem(uffd, shmem);
    }

    private static void CheckShmem(UserfaultFd uffd, bool shmem)
    {
        if (shmem && (uffd.Features & UffdConstants.UFFD_FEATURE_MISSING_SHMEM) == 0)
            throw new ErrnoException($"userfaultfd: this kernel cannot page shared memory (features 0x{uffd.Features:X}); use --memory-backend anon");
    }

    /// <summary>The figures so far.</summary>
    public DemandPagingStatistics Statistics()
    {
        var fillEnd = Interlocked.Read(ref _fillEnded);
        var fillMs = _fillStarted == 0 ? 0 : Stopwatch.GetElapsedTime(_fillStarted, fillEnd != 0 ? fillEnd : Stopwatch.GetTimestamp()).TotalMilliseconds;
        var fillBytes = Interlocked.Read(ref _fetchedByFill) * (double)Page.Size;
        return new DemandPagingStatistics(
            _block, State, Error,
            Interlocked.Read(ref _faults), Interlocked.Read(ref _faultsInFlight), Interlocked.Read(ref _faultsLeftWaiting),
            Interlocked.Read(ref _fetchedByFaults), Interlocked.Read(ref _fetchedByFill), Interlocked.Read(ref _written),
            Interlocked.Read(ref _zeroByFaults), Interlocked.Read(ref _zeroByFill), Interlocked.Read(ref _balloonedResolved), Interlocked.Read(ref _discardedResolved),
            Interlocked.Read(ref _sourceReads), Interlocked.Read(ref _sourcePages),
            Interlocked.Read(ref _piecesFilled), Interlocked.Read(ref _piecesAlreadyResolved), Interlocked.Read(ref _piecesLeftEmpty),
            Interlocked.Read(ref _piecesCollapsed), Interlocked.Read(ref _collapseFailures),
            Interlocked.Read(ref _piecesMoved), Interlocked.Read(ref _moveFailures),
            _faultLatency.Percentile(50).TotalMicroseconds, _faultLatency.Percentile(99).TotalMicroseconds, _faultLatency.Max.TotalMicroseconds,
            _faultLatency.Total.TotalMilliseconds,
            _fill is null ? 0 : fillMs,
            fillMs > 0 ? fillBytes / (1 << 20) / (fillMs / 1000) : 0);
    }

    // ---- fault handler ----

    private void HandleFaults()
    {
        var messages = new UffdMsg[MessageBatch];
        var buffer = GC.AllocateUninitializedArray<byte>(FaultAroundPages * Page.Size, pinned: true);
        var runs = new ClaimedRuns(FaultAroundPages);
        Span<PollFd> fds = stackalloc PollFd[2];
        fds[0] = new PollFd { Fd = _uffd.Handle.Fd, Events = Libc.POLLIN };
        fds[1] = new PollFd { Fd = _stopEvent.Fd, Events = Libc.POLLIN };
        while (Volatile.Read(ref _stopping) == 0)
        {
            fds[0].Revents = fds[1].Revents = 0;
            int ready;
            fixed (PollFd* p = fds)
                ready = Libc.Poll(p, 2, -1);
            if (ready < 0)
            {
                if (Libc.LastErrno == Libc.EINTR)
                    continue;
                Fail(new ErrnoException("poll(userfaultfd)", Libc.LastErrno), 0);
                return;
            }
            if (fds[1].Revents != 0)
                return;
            int count;
            try
            {
                count = _uffd.ReadMessages(messages);
            }
            catch (ErrnoException e)
            {
                Fail(e, 0);
                return;
            }
            var read = Stopwatch.GetTimestamp();
            for (var i = 0; i < count; i++)
            {
                if (messages[i].Event != UffdConstants.UFFD_EVENT_PAGEFAULT)
                    continue;
                var offset = messages[i].PagefaultAddress - (ulong)_mapping.Address;
                if (offset >= _mapping.Length)
                    continue; // not ours (cannot happen: one range per descriptor)
                HandleFault(offset >> Page.Shift, (int)messages[i].PagefaultPtid, read, buffer, runs);
            }
        }
    }

    private void HandleFault(ulong page, int threadId, long readTimestamp, byte[] buffer, ClaimedRuns runs)
    {
        Interlocked.Increment(ref _faults);
        _gate.EnterReadLock();
        try
        {
            if (State != DemandPagingState.Paging)
            {
                // Complete: the range was unregistered and the kernel retried the fault. Failed: the page will not
                // come, and the thread must not be given zeros: it stays blocked until its owner stops it.
                if (State == DemandPagingState.Failed)
                    Interlocked.Increment(ref _faultsLeftWaiting);
                return;
            }
            runs.Clear();
            var group = page & ~(ulong)(FaultAroundPages - 1);
            if (_pushed is not null)
            {
                // Nothing is claimed here: owed pages are placed only by whoever receives them.
                if (_unclaimed.Contains(page))
                {
                    // An owed page that has not arrived: its placement wakes this thread.
                    Interlocked.Increment(ref _sourceReads);
                    Interlocked.Increment(ref _sourcePages);
                    _pushed.Faulted(page, readTimestamp, threadId);
                    return;
                }
            }
            else
            {
                // Zero pages around the fault are taken too only where the piece will become a huge page anyway.
                ClaimWhere(group, Math.Min(group + FaultAroundPages, _pageCount), runs, page);
            }
            if (!runs.Contains(page))
            {
                // Pages claimed around a page this fault did not claim are placed all the same: nothing else would
                // (the fill skips claimed pages, and a later fault on one would wait for this claimer for ever).
                if (runs.Count > 0)
                    Resolve(runs, buffer, group, byFill: false);
                if (_discarded.Contains(page) || _placed.Contains(page))
                {
                    // Discarded (it reads zero, whatever the source holds); placed just before this message was read; or
                    // present from the start and never written (a hole): it reads zero.
                    if (_pushed is not null)
                        _holesResolved[page >> Page.ChunkShift] = true; // a 4 KiB mapping in what may have been a huge page
                    if (!_discarded.Contains(page))
                        ResolveZero(page, ref _zeroByFaults);
                    else if (IsBallooned(page))
                        ResolveZero(page, ref _balloonedResolved);
                    else
                        ResolveZero(page, ref _discardedResolved);
                    _faultLatency.RecordSince(readTimestamp);
                }
                else
                {
                    // Someone else claimed it and is bringing it in: its UFFDIO_COPY wakes this thread.
                    Interlocked.Increment(ref _faultsInFlight);
                }
                return;
            }
            Resolve(runs, buffer, group, byFill: false);
            _faultLatency.RecordSince(readTimestamp);
        }
        catch (Exception e)
        {
            Fail(e, page);
        }
        finally
        {
            _gate.ExitReadLock();
        }
        CompleteWithoutFill();
    }

    /// <summary>Without a fill, paging is complete once the last owed data page is in place (placed by faults or writes).</summary>
    private void CompleteWithoutFill()
    {
        if (_fill is null && State == DemandPagingState.Paging && Interlocked.Read(ref _dataOutstanding) == 0)
            TryComplete();
    }

    // ---- claiming and placing ----

    /// <summary>
    /// Claims the pages of [first, end) nobody claimed before that are worth bringing in now: data pages, and zero
    /// pages where the piece is to become a huge page (ballooned ones never: the guest gave them back), plus the
    /// faulting page <paramref name="faultPage"/> whatever it is.
    /// </summary>
    private void ClaimWhere(ulong first, ulong end, ClaimedRuns runs, ulong faultPage)
    {
        bool wanted(ulong p) => p == faultPage || _data.Contains(p) || (_hugePages && !IsBallooned(p));
        var p = first;
        while (p < end)
        {
            if (!wanted(p))
            {
                p++;
                continue;
            }
            var start = p;
            while (p < end && wanted(p))
                p++;
            _unclaimed.RemoveRange(start, p - start, ref runs, static (ref ClaimedRuns r, ulong s, ulong n) => r.Add(s, n));
        }
    }

    /// <summary>
    /// Fetches and places the claimed runs (all inside the piece or group from <paramref name="baseline"/>, which
    /// <paramref name="buffer"/> covers): data pages read from the source, zero pages copied as zeros, ballooned and
    /// discarded pages mapped as zero pages. Nothing of a run is placed if its read fails.
    /// </summary>
    private void Resolve(ClaimedRuns runs, byte[] buffer, ulong baseline, bool byFill)
    {
        for (var r = 0; r < runs.Count; r++)
        {
            var start = runs.Start(r);
            var end = start + runs.Length(r);
            // 1. Read the data pages (each run of them in one read); zero the rest of the buffer.
            long dataPages = 0, zeroPages = 0, ballooned = 0, discarded = 0;
            var p = start;
            while (p < end)
            {
                var kind = Kind(p);
                var s = p;
                while (p < end && Kind(p) == kind)
                    p++;
                var into = buffer.AsSpan((int)((s - baseline) << Page.Shift), (int)((p - s) << Page.Shift));
                switch (kind)
                {
                    case PageKind.Data:
                        Interlocked.Increment(ref _sourceReads);
                        Interlocked.Add(ref _sourcePages, (long)(p - s));
                        _source.ReadPages(s, p - s, into);
                        dataPages += (long)(p - s);
                        break;
                    case PageKind.Zero:
                        into.Clear();
                        zeroPages += (long)(p - s);
                        break;
                    case PageKind.Ballooned:
                        ballooned += (long)(p - s);
                        break;
                    default:
                        discarded += (long)(p - s);
                        break;
                }
            }
            // Counted before placing: a placement wakes the threads waiting on these pages, and what they can see
            // must already be in the statistics (a placement that fails fails the whole pager anyway). What is
            // outstanding drops only once they are in place: it decides when paging is complete.
            Interlocked.Add(ref byFill ? ref _fetchedByFill : ref _fetchedByFaults, dataPages);
            Interlocked.Add(ref byFill ? ref _zeroByFill : ref _zeroByFaults, zeroPages);
            Interlocked.Add(ref _balloonedResolved, ballooned);
            Interlocked.Add(ref _discardedResolved, discarded);
            // 2. Place: copy runs of data and zero pages, map zero pages over given-back ones.
            p = start;
            fixed (byte* b = buffer)
            {
                while (p < end)
                {
                    var copy = Kind(p) is PageKind.Data or PageKind.Zero;
                    var s = p;
                    while (p < end && (Kind(p) is PageKind.Data or PageKind.Zero) == copy)
                        p++;
                    var at = _mapping.Address + (nint)(s << Page.Shift);
                    PlaceRange(at, copy ? (nint)(b + ((s - baseline) << Page.Shift)) : 0, (p - s) << Page.Shift);
                }
            }
            _placed.AddRange(start, end - start);
            Interlocked.Add(ref _dataOutstanding, -dataPages);
        }
    }

    private enum PageKind { Data, Zero, Ballooned, Discarded }

    private PageKind Kind(ulong page) =>
        IsBallooned(page) ? PageKind.Ballooned
        : _discarded.Contains(page) ? PageKind.Discarded
        : _data.Contains(page) ? PageKind.Data
        : PageKind.Zero;

    /// <summary>Maps a zero page at <paramref name="page"/> if missing (one found in place is only woken); counts it when it placed one.</summary>
    private void ResolveZero(ulong page, ref long counter)
    {
        var at = _mapping.Address + (nint)(page << Page.Shift);
        // Placed without waking, counted, then woken: a woken thread must find the page in the statistics already
        // (a test read them right after its toucher returned and once saw one short).
        if (PlaceRange(at, 0, Page.Size, wake: false) > 0)
            Interlocked.Increment(ref counter);
        _uffd.Wake(at, Page.Size);
    }

    /// <summary>
    /// UFFDIO_COPY from <paramref name="from"/> (UFFDIO_ZEROPAGE when it is 0) over a range, going past pages already
    /// there (EEXIST: someone placed them; their waiters are woken) and retrying interruptions (EAGAIN). Returns the
    /// bytes it placed itself.
    /// </summary>
    private ulong PlaceRange(nint at, nint from, ulong length, bool wake = true)
    {
        ulong done = 0, placed = 0;
        while (done < length)
        {
            ulong n;
            var errno = from != 0
                ? _uffd.Copy(at + (nint)done, from + (nint)done, length - done, out n)
                : _uffd.ZeroPage(at + (nint)done, length - done, out n, wake);
            done += n;
            placed += n;
            if (errno == 0)
                break;
            if (errno == Libc.EEXIST)
            {
                _uffd.Wake(at + (nint)done, Page.Size);
                done += Page.Size;
                continue;
            }
            if (errno != Libc.EAGAIN)
                throw new ErrnoException(from != 0 ? "ioctl(UFFDIO_COPY)" : "ioctl(UFFDIO_ZEROPAGE)", errno);
        }
        return placed;
    }

    // ---- failure and shutdown ----

    private void Fail(Exception e, ulong page)
    {
        var where = e is PageSourceException p ? p.Page : page;
        var message = e switch
        {
            PageSourceException => $"RAM block '{_block}' page {where} (offset 0x{where << Page.Shift:X}): {e.Message}",
            _ => $"RAM block '{_block}' page {where}: demand paging failed: {e.Message}",
        };
        if (Interlocked.CompareExchange(ref _error, message, null) is not null)
            return;
        Volatile.Write(ref _state, (int)DemandPagingState.Failed);
        _completion.TrySetException(new DemandPagingException(message, _block, where, e));
    }

    private void WakeHandler()
    {
        ulong one = 1;
        Libc.Write(_stopEvent.Fd, &one, sizeof(ulong));
    }

    /// <summary>
    /// Stops both threads (the fill after its current piece), then closes the userfaultfd, which releases any thread
    /// still waiting with zero-filled memory: call it only once nothing that must not see that can be waiting.
    /// </summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _stopping, 1) != 0)
            return;
        WakeHandler();
        foreach (var fill in _fill ?? [])
            fill.Join();
        Volatile.Read(ref _collapser)?.Join();
        _handler.Join();
        if (Interlocked.CompareExchange(ref _state, (int)DemandPagingState.Stopped, (int)DemandPagingState.Paging) == (int)DemandPagingState.Paging)
            _completion.TrySetCanceled();
        ReleaseSource();
        _uffd.Dispose();
        _stopEvent.Dispose();
        _gate.Dispose();
    }

    /// <summary>Runs of claimed pages (start, length), in ascending order, in preallocated arrays.</summary>
    private sealed class ClaimedRuns(int capacity)
    {
        private readonly ulong[] _starts = new ulong[Math.Max(1, (capacity + 1) / 2)];
        private readonly ulong[] _lengths = new ulong[Math.Max(1, (capacity + 1) / 2)];

        public int Count { get; private set; }

        public ulong Start(int i) => _starts[i];

        public ulong Length(int i) => _lengths[i];

        public void Clear() => Count = 0;

        public void Add(ulong start, ulong length)
        {
            if (Count > 0 && _starts[Count - 1] + _lengths[Count - 1] == start)
            {
                _lengths[Count - 1] += length;
                return;
            }
            _starts[Count] = start;
            _lengths[Count] = length;
            Count++;
        }

        public bool Contains(ulong page)
        {
            for (var i = 0; i < Count; i++)
            {
                if (page >= _starts[i] && page < _starts[i] + _lengths[i])
                    return true;
            }
            return false;
        }
    }
}
