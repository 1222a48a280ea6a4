using Ferry.Kvm;

namespace Ferry.Migration.Engine;

/// <summary>
/// Pages the guest declared free while a verified migration ran (a free page hint, or pages it inflated or reported
/// free that the host discarded) and has not written since: the destination may hold stale contents or zeros there while the
/// source holds others, and the guest does not care, so the digests leave them out (<see cref="SwitchoverDigests"/>).
/// A page the guest writes again shows up in the next dirty-log sync, which takes it out of the set
/// (<see cref="Written"/>), so a page back in use is compared again. Hints and reports arrive on vCPU threads; the
/// sets are atomic per word.
/// </summary>
internal sealed class GuestFreePages
{
    private readonly PageSet[] _sets;

    public GuestFreePages(IReadOnlyList<RamBlock> blocks) => _sets = [.. blocks.Select(b => new PageSet(b.PageCount))];

    /// <summary>The block's pages declared free and not written since.</summary>
    public PageSet this[int block] => _sets[block];

    /// <summary>A hint or a discard: [offset, offset + length) of a block (bytes; partial pages count whole).</summary>
    public void Add(int block, ulong offset, ulong length)
    {
        if ((uint)block >= (uint)_sets.Length || length == 0)
            return;
        var set = _sets[block];
        var first = offset / Page.Size;
        var end = Math.Min(Page.PagesFor(offset + length), set.PageCount);
        if (first < end)
            set.AddRange(first, end - first);
    }

    /// <summary>After a sync: <paramref name="dirty"/> holds the pages written since the previous one (the pass's sets right after the sync), which are in use again.</summary>
    public void Written(PageSet[] dirty)
    {
        for (var b = 0; b < _sets.Length; b++)
            _sets[b].RemoveAll(dirty[b]);
    }
}
