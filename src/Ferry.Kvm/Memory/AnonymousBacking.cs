using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// Private anonymous memory aligned to 2 MiB with MADV_HUGEPAGE, as QEMU backs guest RAM by default. Under the
/// KVM these hosts run, every 4 KiB guest mapping costs a shadow-MMU fault (~25 µs) whatever the backing, while an
/// aligned transparent huge page is mapped by one fault for 512 pages: that is the reason this backing exists.
/// <para>
/// No file says where data is, so /proc/self/pagemap does (<see cref="PageMap"/>): a page is data when it is
/// resident or swapped. With transparent huge pages residency comes in 2 MiB pieces: touching one word of a huge
/// page makes all 512 pages resident (the rest zero-filled), so the extents of a touched huge page cover all of
/// it and its zero pages travel as zero runs, while a 2 MiB region never touched is skipped whole. Reading the
/// pagemap allocates nothing, and nothing outside the extents is ever read (on these hosts a read fault on
/// untouched anonymous memory allocates a fresh page instead of mapping the shared zero page). A page that maps
/// the zero page counts as data: it reads zero and becomes a zero run.
/// </para>
/// <para>
/// A discard is MADV_DONTNEED: the pages read zero afterwards and their memory goes back once the whole huge
/// page is free (a discard of part of a huge page splits it; the kernel frees the rest under pressure). Whole
/// aligned 2 MiB discards free at once; they are counted apart from scattered ones. Bulk writes copy through the
/// mapping (there is no file to pwrite into). The mapping belongs to the block; this backing owns nothing else.
/// </para>
/// </summary>
internal sealed class AnonymousBacking : RamBacking
{
    private const ulong HugePageSize = Page.ChunkSize;

    private readonly MappedRegion _mapping;
    private bool _mappedOver;

    private AnonymousBacking(MappedRegion mapping) => _mapping = mapping;

    private ulong PageCount => _mapping.Length >> Page.Shift;

    /// <summary>
    /// Maps <paramref name="size"/> bytes of private anonymous memory at a 2 MiB boundary and asks for huge pages.
    /// The caller owns the returned mapping; the backing only answers for it.
    /// </summary>
    public static (AnonymousBacking Backing, MappedRegion Mapping) Map(ulong size)
    {
        var mapping = MappedRegion.MapAnonymousAligned(size, HugePageSize);
        try
        {
            ErrnoException.Check(Libc.Madvise(mapping.Address, (nuint)size, Libc.MADV_HUGEPAGE), "madvise(HUGEPAGE)");
            return (new AnonymousBacking(mapping), mapping);
        }
        catch
        {
            mapping.Dispose();
            throw;
        }
    }

    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        var pages = new PageSet(PageCount);
        if (!_mappedOver)
            PageMap.PrivatePages(_mapping.Address, PageCount, pages.Words);
        ulong position = 0;
        while (pages.NextRun(ref position, PageCount, out var start, out var length))
            yield return (start << Page.Shift, length << Page.Shift);
    }

    public override void Discard(ulong offset, ulong length)
    {
        // Whole aligned huge pages are counted apart from the scattered rest by RamBlock.Discard, for every backing.
        ErrnoException.Check(Libc.Madvise(_mapping.Address + (nint)offset, (nuint)length, Libc.MADV_DONTNEED), "madvise(DONTNEED)");
    }

    public override void WriteAt(ulong offset, ReadOnlySpan<byte> data) => data.CopyTo(_mapping.GetSpan(offset, data.Length));

    /// <summary>There is no file to pwrite into: a load writes through the mapping anyway, so it may as well receive there.</summary>
    public override bool LoadsThroughMapping => !_mappedOver;

    /// <summary>Resident pages of this process in the range (the shared zero page excluded: it costs nothing).</summary>
    public override ulong AllocatedBytes() =>
        _mappedOver ? 0 : PageMap.PrivatePages(_mapping.Address, PageCount, [], allocatedOnly: true) * Page.Size;

    /// <summary>A file was mapped over the range: the anonymous memory went with the old mapping.</summary>
    public override void MappedOver() => _mappedOver = true;

    public override void Dispose()
    {
        // The mapping is the block's; there is nothing else to give back.
    }
}
