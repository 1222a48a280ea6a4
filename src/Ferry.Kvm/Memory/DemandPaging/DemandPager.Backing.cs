using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>What the block's backing asks of the pager while pages are owed: residency before managed access, data extents, discards, bulk writes.</summary>
public sealed unsafe partial class DemandPager
{
    /// <summary>
    /// Brings [offset, offset + length) in before managed code reads or writes it through the mapping: with
    /// MADV_POPULATE_READ, so a page still owed is waited for inside a system call. A managed thread blocked in a
    /// plain page fault cannot be suspended by the garbage collector, and a collection that waits for it while the
    /// fault handler (managed too) waits for the collection would hang the process; inside a system call the thread
    /// is outside managed code and the collector does not wait for it. vCPUs need nothing: they wait inside KVM_RUN.
    /// </summary>
    internal void Populate(ulong offset, ulong length)
    {
        if (length == 0 || State is DemandPagingState.Complete or DemandPagingState.Stopped)
            return;
        var (first, count) = Page.Covering(offset, length);
        var at = _mapping.Address + (nint)(first << Page.Shift);
        while (Libc.Madvise(at, (nuint)(count << Page.Shift), Libc.MADV_POPULATE_READ) != 0)
        {
            var errno = Libc.LastErrno;
            if (errno is not (Libc.EINTR or Libc.EAGAIN))
                return; // e.g. unsupported (before Linux 5.14): the access below faults as it would have anyway
        }
    }

    /// <summary>
    /// The owed data pages not yet in place, added to <paramref name="into"/>: they hold data although nothing is
    /// resident for them yet. Reading them through the mapping brings them in like any fault.
    /// </summary>
    internal void AddOwedData(PageSet into)
    {
        if (State != DemandPagingState.Paging && State != DemandPagingState.Failed)
            return;
        var data = _data.Words;
        var placed = _placed.Words;
        var discarded = _discarded.Words;
        var target = into.Words;
        for (var w = 0; w < target.Length; w++)
            target[w] |= data[w] & ~Volatile.Read(ref placed[w]) & ~Volatile.Read(ref discarded[w]);
    }

    /// <summary>
    /// A discard while paging: the pages are claimed (never fetched from now on) and marked discarded (a later
    /// touch is resolved as zero), then <paramref name="discard"/> gives their memory back. Returns false when
    /// paging is over and the caller discards as usual.
    /// </summary>
    internal bool Discard(ulong firstPage, ulong count, Action discard)
    {
        _gate.EnterWriteLock();
        try
        {
            if (State is DemandPagingState.Complete or DemandPagingState.Stopped)
                return false;
            _unclaimed.RemoveRange(firstPage, count);
            for (var p = firstPage; p < firstPage + count; p++)
            {
                if (_data.Contains(p) && !_placed.Contains(p) && !_discarded.Contains(p))
                    Interlocked.Decrement(ref _dataOutstanding);
            }
            _discarded.AddRange(firstPage, count);
            discard();
            // A thread may be waiting on one of these pages already: its fault was reported (pushed pages) and no
            // placement will come now. Woken, it faults again and the page is resolved as zero.
            _uffd.Wake(_mapping.Address + (nint)(firstPage << Page.Shift), count << Page.Shift);
        }
        finally
        {
            _gate.ExitWriteLock();
        }
        // The last owed pages may have been given back rather than placed.
        CompleteWithoutFill();
        return true;
    }

    /// <summary>
    /// A bulk write while paging (what postcopy's background stream does): pages nobody claimed are placed with
    /// UFFDIO_COPY straight from <paramref name="data"/> and never fetched; the rest are written through the mapping
    /// (a page still on its way is waited for, then overwritten). Returns false when paging is over.
    /// </summary>
    internal bool Write(ulong offset, ReadOnlySpan<byte> data)
    {
        if (!Page.IsAligned(offset) || !Page.IsAligned((ulong)data.Length))
        {
            // Partial pages: through the mapping, once the pages are in.
            if (State != DemandPagingState.Paging)
                return false;
            Populate(offset, (ulong)data.Length);
            data.CopyTo(_mapping.GetSpan(offset, data.Length));
            return true;
        }
        var runs = new ClaimedRuns(data.Length / Page.Size);
        _gate.EnterReadLock();
        try
        {
            if (State != DemandPagingState.Paging)
                return false;
            var first = offset >> Page.Shift;
            var count = (ulong)data.Length >> Page.Shift;
            _unclaimed.RemoveRange(first, count, ref runs, static (ref ClaimedRuns r, ulong s, ulong n) => r.Add(s, n));
            fixed (byte* b = data)
            {
                for (var r = 0; r < runs.Count; r++)
                {
                    var s = runs.Start(r);
                    var n = runs.Length(r);
                    PlaceRange(_mapping.Address + (nint)(s << Page.Shift), (nint)(b + ((s - first) << Page.Shift)), n << Page.Shift);
                    _placed.AddRange(s, n);
                    long owed = 0;
                    for (var p = s; p < s + n; p++)
                    {
                        if (_data.Contains(p) && !_discarded.Contains(p))
                            owed++;
                    }
                    Interlocked.Add(ref _dataOutstanding, -owed);
                    Interlocked.Add(ref _written, (long)n);
                }
            }
        }
        finally
        {
            _gate.ExitReadLock();
        }
        // Pages claimed by someone else (or already in place): written through the mapping, outside the gate (the
        // write may wait in a fault for the page's claimer, and the handler must be free to resolve it).
        var position = 0;
        for (var r = 0; r <= runs.Count; r++)
        {
            var next = r < runs.Count ? (int)((runs.Start(r) - (offset >> Page.Shift)) << Page.Shift) : data.Length;
            if (next > position)
            {
                Populate(offset + (ulong)position, (ulong)(next - position));
                data[position..next].CopyTo(_mapping.GetSpan(offset + (ulong)position, next - position));
            }
            if (r < runs.Count)
                position = next + (int)(runs.Length(r) << Page.Shift);
        }
        CompleteWithoutFill();
        return true;
    }
}
