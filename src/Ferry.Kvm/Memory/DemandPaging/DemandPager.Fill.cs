using System.Diagnostics;
using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>The background fill of a block read from its source (a lazy restore): fill threads, whole pieces moved in, collapsing.</summary>
public sealed unsafe partial class DemandPager
{
    private void Fill()
    {
        var buffer = GC.AllocateUninitializedArray<byte>(Page.ChunkSize, pinned: true);
        var runs = new ClaimedRuns(Page.ChunkPages);
        var pieces = Page.ChunksFor(_pageCount);
        // A whole piece is read into a huge page of the fill's own and moved in as it is: one copy (the read), and
        // the block gets the huge page itself, where UFFDIO_COPY places 4 KiB pages that MADV_COLLAPSE must then
        // copy again (measured on this host, 1 GiB: 9.8 GiB/s moved against 0.43-2.66 GiB/s copied and collapsed).
        MappedRegion? staging = null;
        try
        {
            if (_movesPieces)
            {
                try
                {
                    staging = MappedRegion.MapAnonymousAligned(Page.ChunkSize, Page.ChunkSize);
                    ErrnoException.Check(Libc.Madvise(staging.Address, Page.ChunkSize, Libc.MADV_HUGEPAGE), "madvise(HUGEPAGE)");
                }
                catch (ErrnoException)
                {
                    // No staging piece: this thread copies, as without UFFDIO_MOVE.
                    staging?.Dispose();
                    staging = null;
                }
            }
            ulong piece;
            while ((piece = (ulong)Interlocked.Increment(ref _nextPiece)) < pieces && Volatile.Read(ref _stopping) == 0)
            {
                var first = piece << Page.ChunkShift;
                var end = Math.Min(first + Page.ChunkPages, _pageCount);
                _gate.EnterReadLock();
                try
                {
                    if (State != DemandPagingState.Paging)
                        return;
                    var position = first;
                    var hasData = _data.NextRun(ref position, end, out _, out _);
                    position = first;
                    var untouched = !_unclaimed.NextGap(ref position, end, out _, out _);
                    if (!hasData && untouched)
                    {
                        // Zero and never touched: left to the kernel, which gives it a huge page on first touch once
                        // the range is unregistered (until then a touch is resolved as a fault like any other).
                        Interlocked.Increment(ref _piecesLeftEmpty);
                        continue;
                    }
                    runs.Clear();
                    ClaimWhere(first, end, runs, faultPage: ulong.MaxValue);
                    if (runs.Count == 0)
                    {
                        Interlocked.Increment(ref _piecesAlreadyResolved);
                    }
                    else if (staging is not null && end - first == Page.ChunkPages && runs.Count == 1 && runs.Length(0) == Page.ChunkPages)
                    {
                        MoveWholePiece(piece, first, staging);
                        Interlocked.Increment(ref _piecesFilled);
                    }
                    else
                    {
                        Resolve(runs, buffer, first, byFill: true);
                        Interlocked.Increment(ref _piecesFilled);
                    }
                }
                finally
                {
                    _gate.ExitReadLock();
                }
                if (_hugePages)
                    Collapse(piece, first, end);
            }
        }
        catch (Exception e)
        {
            Fail(e, runs.Count > 0 ? runs.Start(0) : 0);
        }
        finally
        {
            staging?.Dispose();
            // The last fill thread out completes paging (every piece has been taken and placed by then).
            if (Interlocked.Decrement(ref _fillsRunning) == 0)
            {
                if (Volatile.Read(ref _stopping) == 0 && State == DemandPagingState.Paging)
                    TryComplete();
                Interlocked.CompareExchange(ref _fillEnded, Stopwatch.GetTimestamp(), 0);
            }
        }
    }

    /// <summary>
    /// Places a piece the fill claimed whole (nothing of it touched, ballooned or discarded: every page is data or
    /// zero): reads its data pages into <paramref name="staging"/> (checked by the source as always), zeroes the rest,
    /// then UFFDIO_MOVE of the 2 MiB, which also wakes any thread waiting on it. Whatever the kernel did not move
    /// (it refused, or moved part) is copied from the staging piece, where it still is.
    /// </summary>
    private void MoveWholePiece(ulong piece, ulong first, MappedRegion staging)
    {
        var end = first + Page.ChunkPages;
        long dataPages = 0, zeroPages = 0;
        var p = first;
        while (p < end)
        {
            var data = _data.Contains(p);
            var s = p;
            while (p < end && _data.Contains(p) == data)
                p++;
            var into = staging.GetSpan((s - first) << Page.Shift, (int)((p - s) << Page.Shift));
            if (data)
            {
                Interlocked.Increment(ref _sourceReads);
                Interlocked.Add(ref _sourcePages, (long)(p - s));
                _source.ReadPages(s, p - s, into);
                dataPages += (long)(p - s);
            }
            else
            {
                into.Clear();
                zeroPages += (long)(p - s);
            }
        }
        // Counted before placing, as in Resolve: the placement wakes the threads waiting on these pages.
        Interlocked.Add(ref _fetchedByFill, dataPages);
        Interlocked.Add(ref _zeroByFill, zeroPages);
        var at = _mapping.Address + (nint)(first << Page.Shift);
        // The staging piece must be one huge page for the move to hand one over: where its allocation fell back to
        // 4 KiB pages (fragmentation), or an earlier move left a page table there, this makes it one (at once when
        // it already is). A piece moved page by page is collapsed afterwards like a copied one.
        Libc.Madvise(staging.Address, Page.ChunkSize, Libc.MADV_COLLAPSE);
        var errno = _uffd.Move(at, staging.Address, Page.ChunkSize, out var moved);
        if (errno == 0)
            Interlocked.Increment(ref _piecesMoved);
        else
        {
            Interlocked.Increment(ref _moveFailures);
            PlaceRange(at + (nint)moved, staging.Address + (nint)moved, Page.ChunkSize - moved);
        }
        _placed.AddRange(first, Page.ChunkPages);
        Interlocked.Add(ref _dataOutstanding, -dataPages);
    }

    /// <summary>
    /// Makes piece <paramref name="piece"/> one huge page if every page of it is in place (MADV_COLLAPSE refuses a
    /// registered range with a missing or zero-page entry; it is tried again after completion).
    /// </summary>
    private void Collapse(ulong piece, ulong first, ulong end)
    {
        if (_collapsed[piece] || end - first != Page.ChunkPages)
            return;
        var position = first;
        if (_placed.NextGap(ref position, end, out _, out _) || HasGivenBack(first, end))
            return;
        if (Libc.Madvise(_mapping.Address + (nint)(first << Page.Shift), Page.ChunkSize, Libc.MADV_COLLAPSE) == 0)
        {
            _collapsed[piece] = true;
            Interlocked.Increment(ref _piecesCollapsed);
        }
        else
        {
            Interlocked.Increment(ref _collapseFailures);
        }
    }

    /// <summary>Whether a ballooned or discarded page lies in [first, end): such a piece stays 4 KiB pages.</summary>
    private bool HasGivenBack(ulong first, ulong end)
    {
        var position = first;
        if (_discarded.NextRun(ref position, end, out _, out _))
            return true;
        position = first;
        return _ballooned is not null && _ballooned.NextRun(ref position, end, out _, out _);
    }

    private bool IsBallooned(ulong page) => _ballooned is not null && _ballooned.Contains(page);

    /// <summary>
    /// Every owed data page is in place: unregister the range (under the exclusive gate, so no copy is on its way),
    /// collapse the pieces that could not be while registered, and complete.
    /// </summary>
    private void TryComplete()
    {
        _gate.EnterWriteLock();
        try
        {
            if (State != DemandPagingState.Paging)
            {
                _gate.ExitWriteLock();
                return;
            }
            if (Interlocked.Read(ref _dataOutstanding) != 0)
                throw new InvalidOperationException($"RAM block '{_block}': the fill ended with {Interlocked.Read(ref _dataOutstanding)} data pages not in place");
            // Pages never claimed now read zero from the kernel: the pieces left empty, and ballooned pages.
            _uffd.Unregister(_mapping.Address, _mapping.Length);
            Volatile.Write(ref _state, (int)DemandPagingState.Complete);
        }
        catch (Exception e)
        {
            _gate.ExitWriteLock();
            Fail(e, 0);
            return;
        }
        _gate.ExitWriteLock();
        Interlocked.CompareExchange(ref _fillEnded, Stopwatch.GetTimestamp(), 0);
        ReleaseSource();
        if (_hugePages && _pushed is not null)
        {
            // Pushed pages complete on whichever thread placed the last one (a migration loader, the urgent one
            // among them): the collapsing, one 2 MiB copy per split piece, goes to a thread of the pager's own.
            var collapser = new Thread(CollapseAfterCompletion) { Name = $"ferry-pager-collapse:{_block}", IsBackground = true };
            Volatile.Write(ref _collapser, collapser);
            collapser.Start();
        }
        else if (_hugePages)
        {
            CollapseAfterCompletion();
        }
        _completion.TrySetResult();
        WakeHandler();
    }

    /// <summary>
    /// After completion, the pieces that could not be collapsed while registered: for pages read in, every piece
    /// with a page placed; for pushed pages, the pieces that were owed something or had a hole resolved (the rest
    /// were never split and kept their huge pages).
    /// </summary>
    private void CollapseAfterCompletion()
    {
        var pieces = Page.ChunksFor(_pageCount);
        for (ulong piece = 0; piece < pieces && Volatile.Read(ref _stopping) == 0; piece++)
        {
            var first = piece << Page.ChunkShift;
            var position = first;
            var end = Math.Min(first + Page.ChunkPages, _pageCount);
            var split = _pushed is null
                ? _placed.NextRun(ref position, end, out _, out _)
                : _holesResolved[piece] || _data.NextRun(ref position, end, out _, out _);
            if (!_collapsed[piece] && split)
                Collapse(piece, first, end);
        }
    }

    /// <summary>Nothing reads the source any more (complete, or both threads stopped): a disposable source is closed.</summary>
    private void ReleaseSource()
    {
        if (Interlocked.Exchange(ref _sourceReleased, 1) == 0)
            (_source as IDisposable)?.Dispose();
    }
}
