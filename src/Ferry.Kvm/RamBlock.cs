using System.Runtime.InteropServices;
using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// A named, contiguous range of guest RAM, mapped into the VMM and registered as one KVM memory slot. The block
/// (name + offset) is the unit that migration and snapshots address, never a global address. Owns its mapping
/// and its <see cref="RamBacking"/>, which answers everything that depends on what is behind the range: which
/// pages hold data, discard, bulk writes, allocated bytes. A block starts on a memfd (<see cref="MemfdBacking"/>);
/// a lazy restore swaps in a copy-on-write file mapping (<see cref="MapCopyOnWrite"/>) or demand paging
/// (<see cref="BeginDemandPaging"/>) at the same address.
/// </summary>
public sealed class RamBlock : IDisposable
{
    private RamBacking _backing;

    private RamBlock(string name, ulong guestPhysicalAddress, ulong size, int slot, RamBackend backend, RamBacking backing, MappedRegion mapping)
    {
        Name = name;
        GuestPhysicalAddress = guestPhysicalAddress;
        Size = size;
        Slot = slot;
        Backend = backend;
        _backing = backing;
        Mapping = mapping;
        VmmDirty = new PageSet(PageCount);
    }

    public string Name { get; }

    public ulong GuestPhysicalAddress { get; }

    public ulong Size { get; }

    public ulong PageCount => Size >> Page.Shift;

    /// <summary>The KVM memory slot this block is registered as.</summary>
    public int Slot { get; }

    /// <summary>The block's address range in the VMM; it stays put whatever backing is mapped into it.</summary>
    public MappedRegion Mapping { get; }

    /// <summary>Pages the VMM itself wrote (KVM's dirty log does not see writes through the VMM's mapping).</summary>
    public PageSet VmmDirty { get; }

    public ulong EndAddress => GuestPhysicalAddress + Size;

    /// <summary>The block is mapped copy-on-write from a snapshot file (a lazy restore), not backed by its memfd.</summary>
    public bool IsFileMapped => _backing is FileCopyOnWriteBacking;

    /// <summary>
    /// The demand pager of a block started "empty but owed" (<see cref="BeginDemandPaging"/>), also once it has
    /// completed (for its figures); null for a block that never was.
    /// </summary>
    public DemandPager? Pager => (_backing as DemandPagedBacking)?.Pager;

    /// <summary>Pages of a file-mapped block still read through the file (0 for a memfd block).</summary>
    public ulong FileMappedPages => _backing.FileMappedPages;

    /// <summary>Discards of a file-mapped block that could not remap (out of mappings) and zeroed the pages instead.</summary>
    public long DiscardsZeroFilled => _backing.DiscardsZeroFilled;

    public bool Contains(ulong gpa, ulong length) =>
        gpa >= GuestPhysicalAddress && length <= Size && gpa - GuestPhysicalAddress <= Size - length;

    public static RamBlock Create(string name, ulong guestPhysicalAddress, ulong size, int slot, RamBackend backend = RamBackend.Memfd)
    {
        if (size == 0 || !Page.IsAligned(size))
            throw new ArgumentOutOfRangeException(nameof(size), $"RAM block {name}: size {size} is not a positive multiple of 4 KiB");
        switch (backend)
        {
            case RamBackend.Memfd:
            {
                var (backing, mapping) = MemfdBacking.Map(name, size);
                return new RamBlock(name, guestPhysicalAddress, size, slot, backend, backing, mapping);
            }
            case RamBackend.Anonymous:
            {
                var (backing, mapping) = AnonymousBacking.Map(size);
                return new RamBlock(name, guestPhysicalAddress, size, slot, backend, backing, mapping);
            }
            default:
                throw new ArgumentOutOfRangeException(nameof(backend), $"RAM block {name}: unknown memory backend {backend}");
        }
    }

    /// <summary>What the block was created on (a lazy restore maps a file over it later; see <see cref="IsFileMapped"/>).</summary>
    public RamBackend Backend { get; }

    /// <summary>
    /// Bytes the host has actually allocated for this block: memfd blocks in use, plus, for a file-mapped block,
    /// the pages the process holds its own copy of (the file's page cache is not counted: it is shared and clean).
    /// </summary>
    public ulong AllocatedBytes() => _backing.AllocatedBytes();

    /// <summary>
    /// Lazy restore: maps the block copy-on-write from <paramref name="file"/>, page i at
    /// <paramref name="fileOffset"/> + i * 4096, so the guest can run before any page is read. Pages whose bit is
    /// clear in <paramref name="present"/> read as zero whatever the file holds in their slot. The file must stay
    /// unchanged (and at least as long) while the block is mapped; the memfd's pages are given back. Call before
    /// the vCPUs run the restored guest.
    /// </summary>
    public void MapCopyOnWrite(SafeHandle file, ulong fileOffset, ReadOnlySpan<ulong> present)
    {
        if (IsFileMapped || Pager is not null)
            throw new InvalidOperationException($"{Name} is already {(IsFileMapped ? "mapped from a file" : "demand-paged")}");
        _backing = FileCopyOnWriteBacking.Map(Name, Mapping, _backing, file, fileOffset, present);
    }

    /// <summary>
    /// Starts the block "empty but owed" (<see cref="DemandPager"/>): every page outside
    /// <see cref="DemandPagingOptions.Present"/> is discarded (whatever boot set-up wrote is dead), the range is
    /// registered with a userfaultfd, and from then on a page is brought from <paramref name="source"/> when first
    /// touched, and (with the fill) in the background. The KVM slot is unchanged. Call before the vCPUs run the
    /// guest; the pager runs until complete, failed, or the block is disposed. Throws an
    /// <see cref="ErrnoException"/> when userfaultfd is unavailable, before anything is discarded.
    /// </summary>
    public DemandPager BeginDemandPaging(IPageSource source, DemandPagingOptions? options = null)
    {
        options ??= new DemandPagingOptions();
        if (IsFileMapped || Pager is not null)
            throw new InvalidOperationException($"{Name} is already {(IsFileMapped ? "mapped from a file" : "demand-paged")}");
        if (source.DataPages.PageCount != PageCount || (source.BalloonedPages is { } b && b.PageCount != PageCount) ||
            (options.Present is { } p && p.PageCount != PageCount))
            throw new ArgumentException($"{Name}: the page source's sets do not match the block's {PageCount} pages", nameof(source));
        var backing = _backing;
        var present = options.Present;
        void Empty()
        {
            if (present is null)
            {
                backing.Discard(0, Size);
                return;
            }
            ulong position = 0;
            while (present.NextGap(ref position, PageCount, out var start, out var count))
                backing.Discard(start << Page.Shift, count << Page.Shift);
        }
        var pager = DemandPager.Start(Name, Mapping, source, present, Empty,
            hugePages: options.HugePages ?? Backend == RamBackend.Anonymous, options.BackgroundFill, shmem: Backend == RamBackend.Memfd);
        _backing = new DemandPagedBacking(_backing, pager);
        return pager;
    }

    /// <summary>
    /// Call before managed code reads or writes [offset, offset + length) through <see cref="Mapping"/> (GuestMemory
    /// and the page scanner do): while the block is demand-paged, pages still owed are brought in from a system call
    /// (<see cref="DemandPager"/> explains why a managed thread must not wait for them in a plain page fault). A
    /// field test and nothing more for every other block.
    /// </summary>
    public void EnsureResident(ulong offset, ulong length) => _backing.EnsureResident(offset, length);

    /// <summary>
    /// The byte ranges of this block that hold data, in order and page-granular. Everything else reads as zero
    /// without being allocated (never touched, or discarded). Walking these instead of the whole block is how a
    /// migration pass avoids reading (and so allocating) memory that holds nothing.
    /// </summary>
    public IEnumerable<(ulong Offset, ulong Length)> DataExtents() => _backing.DataExtents();

    private long _wholeChunksDiscarded, _scatteredPagesDiscarded;

    /// <summary>
    /// Whole aligned 2 MiB chunks given back by <see cref="Discard"/>: on huge-page memory each frees a huge page at
    /// once (the balloon and free page reporting prefer them).
    /// </summary>
    public long WholeChunksDiscarded => Interlocked.Read(ref _wholeChunksDiscarded);

    /// <summary>4 KiB pages given back outside whole chunks: they read zero at once; on huge-page memory the host frees them only when the rest of their huge page goes too, or under pressure.</summary>
    public long ScatteredPagesDiscarded => Interlocked.Read(ref _scatteredPagesDiscarded);

    /// <summary>Gives the pages in [offset, offset + length) back to the host: they read as zero afterwards.</summary>
    public void Discard(ulong offset, ulong length)
    {
        if (!Page.IsAligned(offset) || !Page.IsAligned(length) || !Contains(GuestPhysicalAddress + offset, length))
            throw new ArgumentOutOfRangeException(nameof(offset), $"discard [0x{offset:X}, +0x{length:X}) is not page-aligned inside {Name}");
        if (length == 0)
            return;
        _backing.Discard(offset, length);
        const ulong chunk = Page.ChunkSize;
        var wholeStart = (offset + chunk - 1) & ~(chunk - 1);
        var wholeEnd = (offset + length) & ~(chunk - 1);
        var whole = wholeEnd > wholeStart ? (wholeEnd - wholeStart) / chunk : 0;
        Interlocked.Add(ref _wholeChunksDiscarded, (long)whole);
        Interlocked.Add(ref _scatteredPagesDiscarded, (long)((length - whole * chunk) >> Page.Shift));
    }

    /// <summary>
    /// Loads bytes into the block the cheapest way its backing allows (a memfd block writes with pwrite and skips
    /// the page faults), which is what a migration destination or a restore does for every page it loads. Not a
    /// VMM write in the dirty-tracking sense: <see cref="VmmDirty"/> is not marked (such writes go through
    /// <see cref="GuestMemory"/>).
    /// </summary>
    public void WriteAt(ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset > Size || (ulong)data.Length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"write [0x{offset:X}, +0x{data.Length:X}) runs past {Name}");
        _backing.WriteAt(offset, data);
    }

    /// <summary>
    /// Where a load may receive [offset, offset + length) straight into (a socket read copying into guest memory,
    /// with no buffer in between), or an empty span where <see cref="WriteAt"/> is cheaper or required (a memfd
    /// writes with pwrite and skips a page fault per page; a demand-paged or file-mapped block has its own rules).
    /// </summary>
    public Span<byte> LoadSpan(ulong offset, int length)
    {
        if (!_backing.LoadsThroughMapping)
            return default;
        if (offset > Size || (ulong)length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"load [0x{offset:X}, +0x{length:X}) runs past {Name}");
        return Mapping.GetSpan(offset, length);
    }

    /// <summary>The backing first: a demand pager's threads must stop before the range they place pages in goes.</summary>
    public void Dispose()
    {
        _backing.Dispose();
        Mapping.Dispose();
    }
}
