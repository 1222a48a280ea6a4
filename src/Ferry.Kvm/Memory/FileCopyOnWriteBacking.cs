using System.Runtime.InteropServices;
using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// A lazily restored block: its range mapped copy-on-write (MAP_PRIVATE | MAP_FIXED) from a snapshot file's page
/// area, so the guest runs before any page is read and the KVM slot is unchanged. No file-level call can say
/// which pages the process has written since, so data extents and allocated bytes come from the file slots still
/// mapped plus /proc/self/pagemap (<see cref="PageMap"/>).
/// <para>
/// Owns the backing it was mapped over (the block's memfd, emptied): the block was created from it, and it is
/// closed with the block as before the restore. Borrows the block's mapping and keeps no reference to the file:
/// the mapping itself holds the file open.
/// </para>
/// </summary>
internal sealed unsafe class FileCopyOnWriteBacking : RamBacking
{
    /// <summary>Pages cleared per span: a span's length is an int, a block can be larger.</summary>
    private const ulong ClearPages = 1 << 18;

    private readonly MappedRegion _mapping;
    private readonly RamBacking _replaced;

    /// <summary>
    /// The pages whose file slot may hold data, so must never be read through the file again once discarded.
    /// </summary>
    private readonly PageSet _fileSlots;

    /// <summary>Serializes discards (each is a test of its slot bits and a remap).</summary>
    private readonly Lock _remapLock = new();

    private long _discardsZeroFilled;

    private FileCopyOnWriteBacking(MappedRegion mapping, PageSet fileSlots, RamBacking replaced)
    {
        _mapping = mapping;
        _fileSlots = fileSlots;
        _replaced = replaced;
    }

    private ulong PageCount => _fileSlots.PageCount;

    public override ulong FileMappedPages => _fileSlots.Count();

    public override long DiscardsZeroFilled => Volatile.Read(ref _discardsZeroFilled);

    /// <summary>
    /// Maps all of <paramref name="mapping"/> copy-on-write from <paramref name="file"/>, page i at
    /// <paramref name="fileOffset"/> + i * 4096; pages whose bit is clear in <paramref name="present"/> read as
    /// zero whatever the file holds in their slot. Empties <paramref name="replaced"/> (whatever boot set-up wrote
    /// is dead) and owns it from then on. Throws before touching anything when an argument is wrong.
    /// </summary>
    public static FileCopyOnWriteBacking Map(string name, MappedRegion mapping, RamBacking replaced, SafeHandle file, ulong fileOffset, ReadOnlySpan<ulong> present)
    {
        var size = mapping.Length;
        var pageCount = size >> Page.Shift;
        if (!Page.IsAligned(fileOffset))
            throw new ArgumentOutOfRangeException(nameof(fileOffset), $"file offset {fileOffset} of {name} is not page-aligned");
        var words = PageSet.WordsFor(pageCount);
        if (present.Length != words)
            throw new ArgumentException($"present bitmap of {present.Length} words does not match {name}'s {words}", nameof(present));
        // A mapping past the end of the file would fault the process (SIGBUS) on the first touch of such a page.
        var fileSize = FileSize(file);
        if (fileSize < fileOffset || fileSize - fileOffset < size)
            throw new ArgumentOutOfRangeException(nameof(fileOffset), $"{name}: the file is {fileSize} bytes, too short for {size} bytes from offset {fileOffset}");

        mapping.MapFilePrivate(0, size, file, (long)fileOffset);
        replaced.MappedOver();
        var slots = new PageSet(pageCount);
        // Bits past the block would name pages that do not exist: the caller validated them, but never trust it.
        slots.UnionWith(present);

        // Slots the bitmap calls absent should be holes (the writer never writes them and punches reused ones); any
        // data found there anyway (a damaged file, a filesystem without holes) is zeroed here and the page is
        // marked so that a later discard remaps it instead of letting the file show through again.
        foreach (var (offset, length) in FileExtents.Data(file, (long)fileOffset, (long)(fileOffset + size)))
        {
            var (first, count) = Page.Covering((ulong)offset - fileOffset, (ulong)length);
            var position = first;
            while (slots.NextGap(ref position, first + count, out var gap, out var gapPages))
            {
                slots.AddRange(gap, gapPages);
                Zero(mapping, gap, gapPages);
            }
        }
        return new FileCopyOnWriteBacking(mapping, slots, replaced);
    }

    private static ulong FileSize(SafeHandle file)
    {
        var added = false;
        try
        {
            file.DangerousAddRef(ref added);
            StatBuffer stat;
            ErrnoException.Check(Libc.Fstat((int)file.DangerousGetHandle(), &stat), "fstat");
            return (ulong)stat.Size;
        }
        finally
        {
            if (added)
                file.DangerousRelease();
        }
    }

    /// <summary>Writes zeros over pages [first, first + count) through the mapping (each becomes a private copy).</summary>
    private static void Zero(MappedRegion mapping, ulong first, ulong count)
    {
        for (var done = 0UL; done < count; done += ClearPages)
            mapping.GetSpan((first + done) << Page.Shift, (int)(Math.Min(ClearPages, count - done) << Page.Shift)).Clear();
    }

    /// <summary>
    /// Data is in the slots still read through the file and in every page the process has its own copy of
    /// (written since the restore, by the guest or the VMM).
    /// </summary>
    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        var pages = new PageSet(PageCount);
        pages.CopyFrom(_fileSlots);
        PageMap.PrivatePages(_mapping.Address, PageCount, pages.Words);
        ulong position = 0;
        while (pages.NextRun(ref position, PageCount, out var start, out var length))
            yield return (start << Page.Shift, length << Page.Shift);
    }

    public override void Discard(ulong offset, ulong length)
    {
        lock (_remapLock)
            DiscardPages(offset >> Page.Shift, (offset + length) >> Page.Shift);
    }

    /// <summary>
    /// MADV_DONTNEED on a private file mapping drops the process's copy and reads the file again, which must not
    /// happen for a slot that holds old data: such runs are replaced with anonymous memory (as Firecracker does
    /// for its file-backed guest memory). Runs whose slot is a hole can simply drop the copy.
    /// </summary>
    private void DiscardPages(ulong firstPage, ulong endPage)
    {
        var page = firstPage;
        while (page < endPage)
        {
            var inFile = _fileSlots.Contains(page);
            var start = page;
            var found = inFile ? _fileSlots.NextRun(ref page, endPage, out _, out _) : _fileSlots.NextGap(ref page, endPage, out _, out _);
            System.Diagnostics.Debug.Assert(found);
            var offset = start << Page.Shift;
            var length = (page - start) << Page.Shift;
            if (!inFile)
            {
                ErrnoException.Check(Libc.Madvise(_mapping.Address + (nint)offset, (nuint)length, Libc.MADV_DONTNEED), "madvise(DONTNEED)");
                continue;
            }
            try
            {
                _mapping.MapAnonymous(offset, length);
            }
            catch (ErrnoException e) when (e.Errno == Libc.ENOMEM)
            {
                // Out of mappings (vm.max_map_count): the pages read zero but stay allocated until the next discard.
                Zero(_mapping, start, page - start);
                Interlocked.Increment(ref _discardsZeroFilled);
                continue;
            }
            _fileSlots.RemoveRange(start, page - start);
        }
    }

    /// <summary>The memfd is not behind this block any more: writes go through the mapping (a private copy per page).</summary>
    public override void WriteAt(ulong offset, ReadOnlySpan<byte> data) => data.CopyTo(_mapping.GetSpan(offset, data.Length));

    /// <summary>
    /// What the replaced backing still holds plus the pages the process has its own copy of; the file's page cache
    /// is not counted (it is shared and clean).
    /// </summary>
    /// <summary>Mapping a file over a lazily restored block again is refused by the block.</summary>
    public override void MappedOver() => throw new InvalidOperationException("a file-mapped block is never mapped over again");

    public override ulong AllocatedBytes() =>
        _replaced.AllocatedBytes() + PageMap.PrivatePages(_mapping.Address, PageCount, [], allocatedOnly: true) * Page.Size;

    public override void Dispose() => _replaced.Dispose();
}
