using System.Runtime.InteropServices;
using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// A named, contiguous range of guest RAM: a memfd mapped shared into the VMM and registered as one KVM memory
/// slot. The block (name + offset) is the unit that migration and snapshots address, never a global address.
/// Owns its memfd and its mapping.
/// <para>
/// A lazily restored block is instead mapped copy-on-write from a snapshot file's page area
/// (<see cref="MapCopyOnWrite"/>): same address, same slot, but the memfd is no longer behind it. The block then
/// answers the same questions (which pages hold data, discard, write, allocated bytes) from the file's present
/// bitmap and /proc/self/pagemap instead of the memfd.
/// </para>
/// </summary>
public sealed unsafe class RamBlock : IDisposable
{
    private RamBlock(string name, ulong guestPhysicalAddress, ulong size, int slot, SafeFd memfd, MappedRegion mapping)
    {
        Name = name;
        GuestPhysicalAddress = guestPhysicalAddress;
        Size = size;
        Slot = slot;
        Memfd = memfd;
        Mapping = mapping;
        VmmDirty = new PageSet(PageCount);
    }

    public string Name { get; }

    public ulong GuestPhysicalAddress { get; }

    public ulong Size { get; }

    public ulong PageCount => Size >> Page.Shift;

    /// <summary>The KVM memory slot this block is registered as.</summary>
    public int Slot { get; }

    /// <summary>The memfd behind the block: holes in it are pages never touched or discarded.</summary>
    public SafeFd Memfd { get; }

    public MappedRegion Mapping { get; }

    /// <summary>Pages the VMM itself wrote (KVM's dirty log does not see writes through the VMM's mapping).</summary>
    public PageSet VmmDirty { get; }

    public ulong EndAddress => GuestPhysicalAddress + Size;

    /// <summary>
    /// Set while the block is mapped copy-on-write from a file: the pages whose file slot may hold data, so must
    /// never be read through the file again once discarded. Null for an ordinary memfd block.
    /// </summary>
    private PageSet? _fileSlots;

    /// <summary>Serializes discards of a file-mapped block (each is a test of its slot bits and a remap).</summary>
    private readonly Lock _remapLock = new();

    /// <summary>The block is mapped copy-on-write from a snapshot file (a lazy restore), not backed by its memfd.</summary>
    public bool IsFileMapped => _fileSlots is not null;

    /// <summary>Pages of a file-mapped block still read through the file (0 for a memfd block).</summary>
    public ulong FileMappedPages => _fileSlots?.Count() ?? 0;

    /// <summary>Discards of a file-mapped block that could not remap (out of mappings) and zeroed the pages instead.</summary>
    public long DiscardsZeroFilled { get; private set; }

    public bool Contains(ulong gpa, ulong length) =>
        gpa >= GuestPhysicalAddress && length <= Size && gpa - GuestPhysicalAddress <= Size - length;

    public static RamBlock Create(string name, ulong guestPhysicalAddress, ulong size, int slot)
    {
        if (size == 0 || !Page.IsAligned(size))
            throw new ArgumentOutOfRangeException(nameof(size), $"RAM block {name}: size {size} is not a positive multiple of 4 KiB");
        var memfd = SafeFd.FromResult(Libc.MemfdCreate("ferry:" + name, Libc.MFD_CLOEXEC), "memfd_create");
        try
        {
            ErrnoException.Check(Libc.Ftruncate(memfd.Fd, (long)size), "ftruncate");
            var mapping = MappedRegion.Map(memfd, size, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED | Libc.MAP_NORESERVE);
            return new RamBlock(name, guestPhysicalAddress, size, slot, memfd, mapping);
        }
        catch
        {
            memfd.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Bytes the host has actually allocated for this block: memfd blocks in use, plus, for a file-mapped block,
    /// the pages the process holds its own copy of (the file's page cache is not counted: it is shared and clean).
    /// </summary>
    public ulong AllocatedBytes()
    {
        StatBuffer stat;
        ErrnoException.Check(Libc.Fstat(Memfd.Fd, &stat), "fstat");
        var bytes = (ulong)stat.Blocks * 512;
        if (_fileSlots is not null)
            bytes += PageMap.PrivatePages(Mapping.Address, PageCount, [], allocatedOnly: true) * Page.Size;
        return bytes;
    }

    /// <summary>
    /// Lazy restore: maps the block copy-on-write from <paramref name="file"/>, page i at
    /// <paramref name="fileOffset"/> + i * 4096, so the guest can run before any page is read. Pages whose bit is
    /// clear in <paramref name="present"/> read as zero whatever the file holds in their slot. The file must stay
    /// unchanged (and at least as long) while the block is mapped; the memfd's pages are given back. Call before
    /// the vCPUs run the restored guest.
    /// </summary>
    public void MapCopyOnWrite(SafeHandle file, ulong fileOffset, ReadOnlySpan<ulong> present)
    {
        if (!Page.IsAligned(fileOffset))
            throw new ArgumentOutOfRangeException(nameof(fileOffset), $"file offset {fileOffset} of {Name} is not page-aligned");
        var words = PageSet.WordsFor(PageCount);
        if (present.Length != words)
            throw new ArgumentException($"present bitmap of {present.Length} words does not match {Name}'s {words}", nameof(present));
        if (_fileSlots is not null)
            throw new InvalidOperationException($"{Name} is already mapped from a file");

        // A mapping past the end of the file would fault the process (SIGBUS) on the first touch of such a page.
        var add = false;
        try
        {
            file.DangerousAddRef(ref add);
            StatBuffer stat;
            ErrnoException.Check(Libc.Fstat((int)file.DangerousGetHandle(), &stat), "fstat");
            if ((ulong)stat.Size < fileOffset || (ulong)stat.Size - fileOffset < Size)
                throw new ArgumentOutOfRangeException(nameof(fileOffset), $"{Name}: the file is {stat.Size} bytes, too short for {Size} bytes from offset {fileOffset}");
        }
        finally
        {
            if (add)
                file.DangerousRelease();
        }

        Mapping.MapFilePrivate(0, Size, file, (long)fileOffset);
        var slots = new PageSet(PageCount);
        // Bits past the block would name pages that do not exist: the caller validated them, but never trust it.
        slots.UnionWith(present);

        // Slots the bitmap calls absent should be holes (the writer never writes them and punches reused ones); any
        // data found there anyway (a damaged file, a filesystem without holes) is zeroed here and the page is
        // marked so that a later discard remaps it instead of letting the file show through again.
        add = false;
        try
        {
            file.DangerousAddRef(ref add);
            var fd = (int)file.DangerousGetHandle();
            foreach (var (offset, length) in FileDataExtents(fd, fileOffset, Size))
            {
                var end = (offset + length) >> Page.Shift;
                for (var page = offset >> Page.Shift; page < end; page++)
                {
                    if (slots.Contains(page))
                        continue;
                    slots.Add(page);
                    Mapping.GetSpan(page << Page.Shift, Page.Size).Clear();
                }
            }
        }
        finally
        {
            if (add)
                file.DangerousRelease();
        }
        _fileSlots = slots;
        // Whatever boot set-up wrote into the memfd is dead now.
        ErrnoException.Check(Libc.Fallocate(Memfd.Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, 0, (long)Size), "fallocate(PUNCH_HOLE)");
    }

    /// <summary>Data extents of [start, start + length) of a file, relative to start (SEEK_DATA/SEEK_HOLE).</summary>
    private static IEnumerable<(ulong Offset, ulong Length)> FileDataExtents(int fd, ulong start, ulong length)
    {
        var position = start;
        var end = start + length;
        while (position < end)
        {
            var data = Libc.Lseek(fd, (long)position, Libc.SEEK_DATA);
            if (data < 0)
            {
                if (Libc.LastErrno == Libc.ENXIO)
                    yield break;
                ErrnoException.ThrowLast("lseek(SEEK_DATA)");
            }
            if ((ulong)data >= end)
                yield break;
            var hole = ErrnoException.Check(Libc.Lseek(fd, data, Libc.SEEK_HOLE), "lseek(SEEK_HOLE)");
            var stop = Math.Min((ulong)hole, end);
            // Page granularity: a partial page of data makes the whole page count.
            var first = ((ulong)data - start) & ~((ulong)Page.Size - 1);
            var last = (stop - start + Page.Size - 1) & ~((ulong)Page.Size - 1);
            yield return (first, last - first);
            position = stop;
        }
    }

    /// <summary>
    /// The byte ranges of this block the host has allocated (memfd data, found with SEEK_DATA/SEEK_HOLE), in order.
    /// Everything else is a hole: never touched, or discarded, and reads as zero. Walking these instead of the
    /// whole block is how a migration pass avoids reading (and so allocating) memory that holds nothing.
    /// </summary>
    public IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        if (_fileSlots is not null)
            return FileMappedDataExtents();
        return MemfdDataExtents();
    }

    /// <summary>
    /// A file-mapped block holds data in the slots still read through the file and in every page the process
    /// has its own copy of (written since the restore, by the guest or the VMM).
    /// </summary>
    private IEnumerable<(ulong Offset, ulong Length)> FileMappedDataExtents()
    {
        var pages = new PageSet(PageCount);
        pages.CopyFrom(_fileSlots!);
        PageMap.PrivatePages(Mapping.Address, PageCount, pages.Words);
        ulong position = 0;
        while (pages.NextRun(ref position, PageCount, out var start, out var length))
            yield return (start << Page.Shift, length << Page.Shift);
    }

    private IEnumerable<(ulong Offset, ulong Length)> MemfdDataExtents()
    {
        ulong position = 0;
        while (position < Size)
        {
            var data = Libc.Lseek(Memfd.Fd, (long)position, Libc.SEEK_DATA);
            if (data < 0)
            {
                if (Libc.LastErrno == Libc.ENXIO)
                    yield break; // no data after position
                ErrnoException.ThrowLast("lseek(SEEK_DATA)");
            }
            var hole = ErrnoException.Check(Libc.Lseek(Memfd.Fd, data, Libc.SEEK_HOLE), "lseek(SEEK_HOLE)");
            var end = Math.Min((ulong)hole, Size);
            if ((ulong)data >= end)
                yield break;
            yield return ((ulong)data, end - (ulong)data);
            position = end;
        }
    }

    /// <summary>Gives the pages in [offset, offset + length) back to the host: they read as zero afterwards.</summary>
    public void Discard(ulong offset, ulong length)
    {
        if (!Page.IsAligned(offset) || !Page.IsAligned(length) || !Contains(GuestPhysicalAddress + offset, length))
            throw new ArgumentOutOfRangeException(nameof(offset), $"discard [0x{offset:X}, +0x{length:X}) is not page-aligned inside {Name}");
        if (length == 0)
            return;
        if (_fileSlots is null)
        {
            ErrnoException.Check(Libc.Fallocate(Memfd.Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, (long)offset, (long)length), "fallocate(PUNCH_HOLE)");
            return;
        }
        lock (_remapLock)
            DiscardFileMapped(offset >> Page.Shift, (offset + length) >> Page.Shift);
    }

    /// <summary>
    /// MADV_DONTNEED on a private file mapping drops the process's copy and reads the file again, which must not
    /// happen for a slot that holds old data: such runs are replaced with anonymous memory (as Firecracker does
    /// for its file-backed guest memory). Runs whose slot is a hole can simply drop the copy.
    /// </summary>
    private void DiscardFileMapped(ulong firstPage, ulong endPage)
    {
        var slots = _fileSlots!;
        var page = firstPage;
        while (page < endPage)
        {
            var inFile = slots.Contains(page);
            var start = page;
            var found = inFile ? slots.NextRun(ref page, endPage, out _, out _) : slots.NextGap(ref page, endPage, out _, out _);
            System.Diagnostics.Debug.Assert(found);
            var offset = start << Page.Shift;
            var length = (page - start) << Page.Shift;
            if (!inFile)
            {
                ErrnoException.Check(Libc.Madvise(Mapping.Address + (nint)offset, (nuint)length, Libc.MADV_DONTNEED), "madvise(DONTNEED)");
                continue;
            }
            try
            {
                Mapping.MapAnonymous(offset, length);
            }
            catch (ErrnoException e) when (e.Errno == Libc.ENOMEM)
            {
                // Out of mappings (vm.max_map_count): the pages read zero but stay allocated until the next discard.
                Mapping.GetSpan(offset, (int)length).Clear();
                DiscardsZeroFilled++;
                continue;
            }
            slots.RemoveRange(start, page - start);
        }
    }

    /// <summary>
    /// Writes bytes into the block through the memfd (pwrite), not through the mapping: for pages not yet allocated
    /// this skips a page fault per page (about half the cost on these hosts), which is what a migration destination
    /// or a restore does for every page it loads.
    /// </summary>
    public unsafe void WriteAt(ulong offset, ReadOnlySpan<byte> data)
    {
        if (offset > Size || (ulong)data.Length > Size - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"write [0x{offset:X}, +0x{data.Length:X}) runs past {Name}");
        if (_fileSlots is not null)
        {
            // The memfd is not behind a file-mapped block: write through the mapping (a private copy per page).
            data.CopyTo(Mapping.GetSpan(offset, data.Length));
            return;
        }
        fixed (byte* start = data)
        {
            var done = 0;
            while (done < data.Length)
            {
                var n = Libc.PWrite(Memfd.Fd, start + done, (nuint)(data.Length - done), (long)offset + done);
                if (n < 0)
                {
                    var errno = System.Runtime.InteropServices.Marshal.GetLastPInvokeError();
                    if (errno == Libc.EINTR)
                        continue;
                    throw new ErrnoException("pwrite", errno);
                }
                done += (int)n;
            }
        }
    }

    public void Dispose()
    {
        Mapping.Dispose();
        Memfd.Dispose();
    }
}
