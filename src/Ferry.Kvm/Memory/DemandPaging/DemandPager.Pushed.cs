using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>Pages pushed in by whoever receives them (postcopy): placement of what is still owed.</summary>
public sealed unsafe partial class DemandPager
{
    /// <summary>
    /// Places pushed pages [<paramref name="firstPage"/>, + <paramref name="pages"/>.Length / 4096) that are still
    /// owed, with UFFDIO_COPY straight from <paramref name="pages"/> (which wakes the threads waiting on them); a page
    /// already in place, or given back since paging began (a balloon inflated over it), is left as it is. Returns
    /// how many it placed. Any thread, several at once. The last owed page completes paging; once paging is over
    /// nothing is owed and it places nothing. Only for a block whose source is an <see cref="IPushedPageSource"/>.
    /// </summary>
    public ulong Place(ulong firstPage, ReadOnlySpan<byte> pages)
    {
        if (!Page.IsAligned((ulong)pages.Length))
            throw new ArgumentException($"RAM block '{_block}': {pages.Length} bytes is not a whole number of pages", nameof(pages));
        fixed (byte* from = pages)
            return PlacePushed(firstPage, (ulong)pages.Length >> Page.Shift, (nint)from);
    }

    /// <summary>As <see cref="Place"/>, for pages known to be zero (UFFDIO_ZEROPAGE).</summary>
    public ulong PlaceZero(ulong firstPage, ulong count) => PlacePushed(firstPage, count, 0);

    private ulong PlacePushed(ulong firstPage, ulong count, nint from)
    {
        if (_pushed is null)
            throw new InvalidOperationException($"RAM block '{_block}': its pages are read from {_source.Description}, not pushed in");
        if (firstPage > _pageCount || count > _pageCount - firstPage)
            throw new ArgumentOutOfRangeException(nameof(firstPage), $"RAM block '{_block}': pages {firstPage}+{count} are outside its {_pageCount} pages");
        ulong placed;
        _gate.EnterReadLock();
        try
        {
            if (State != DemandPagingState.Paging)
                return 0;
            // Claimed first (a fault on one of them from now on waits for this copy), then copied run by run.
            var placing = new PushedPlacing(this, firstPage, from);
            placed = _unclaimed.RemoveRange(firstPage, count, ref placing, static (ref PushedPlacing p, ulong start, ulong n) => p.Place(start, n));
        }
        catch (ErrnoException e)
        {
            Fail(e, firstPage);
            throw new DemandPagingException(Error!, _block, firstPage, e);
        }
        finally
        {
            _gate.ExitReadLock();
        }
        CompleteWithoutFill();
        return placed;
    }

    /// <summary>One run of claimed pushed pages: placed, counted, and taken off what is outstanding (every unclaimed page of a pushed block is an owed data page).</summary>
    private readonly struct PushedPlacing(DemandPager pager, ulong firstPage, nint from)
    {
        public void Place(ulong start, ulong count)
        {
            var at = pager._mapping.Address + (nint)(start << Page.Shift);
            pager.PlaceRange(at, from == 0 ? 0 : from + (nint)((start - firstPage) << Page.Shift), count << Page.Shift);
            pager._placed.AddRange(start, count);
            Interlocked.Add(ref pager._written, (long)count);
            Interlocked.Add(ref pager._dataOutstanding, -(long)count);
        }
    }
}
