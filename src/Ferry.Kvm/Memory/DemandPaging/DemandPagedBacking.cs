namespace Ferry.Kvm;

/// <summary>
/// A block being demand-paged (<see cref="DemandPager"/>): the block's own backing (memfd or anonymous memory) with
/// a userfaultfd over its range. Owns the pager and the backing it wraps. While pages are owed, data extents include
/// the owed data pages (reading one brings it in), a discard claims its pages so they are never fetched, and a bulk
/// write places pages nobody has claimed directly; once paging is complete everything is the wrapped backing's.
/// </summary>
internal sealed class DemandPagedBacking(RamBacking inner, DemandPager pager) : RamBacking
{
    public DemandPager Pager => pager;

    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        if (pager.State is not (DemandPagingState.Paging or DemandPagingState.Failed))
            return inner.DataExtents();
        return Merged();
    }

    private IEnumerable<(ulong Offset, ulong Length)> Merged()
    {
        var pages = new PageSet(pager.PageCount);
        foreach (var (offset, length) in inner.DataExtents())
            pages.AddRange(offset >> Page.Shift, length >> Page.Shift);
        pager.AddOwedData(pages);
        ulong position = 0;
        while (pages.NextRun(ref position, pages.PageCount, out var start, out var count))
            yield return (start << Page.Shift, count << Page.Shift);
    }

    public override void Discard(ulong offset, ulong length)
    {
        if (!pager.Discard(offset >> Page.Shift, length >> Page.Shift, () => inner.Discard(offset, length)))
            inner.Discard(offset, length);
    }

    public override void WriteAt(ulong offset, ReadOnlySpan<byte> data)
    {
        if (!pager.Write(offset, data))
            inner.WriteAt(offset, data);
    }

    public override ulong AllocatedBytes() => inner.AllocatedBytes();

    public override void EnsureResident(ulong offset, ulong length) => pager.Populate(offset, length);

    public override void MappedOver() => throw new InvalidOperationException("a demand-paged block is never mapped over");

    /// <summary>The pager first (its threads stop and the userfaultfd closes), then what it paged into.</summary>
    public override void Dispose()
    {
        pager.Dispose();
        inner.Dispose();
    }
}
