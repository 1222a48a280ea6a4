using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// A named, contiguous range of guest RAM: a memfd mapped shared into the VMM and registered as one KVM memory
/// slot. The block (name + offset) is the unit that migration and snapshots address, never a global address.
/// Owns its memfd and its mapping.
/// </summary>
public sealed unsafe class RamBlock : IDisposable
{
    public const int PageShift = 12;
    public const ulong PageSize = 1UL << PageShift;

    private RamBlock(string name, ulong guestPhysicalAddress, ulong size, int slot, SafeFd memfd, MappedRegion mapping)
    {
        Name = name;
        GuestPhysicalAddress = guestPhysicalAddress;
        Size = size;
        Slot = slot;
        Memfd = memfd;
        Mapping = mapping;
        VmmDirty = new PageBitmap(PageCount);
    }

    public string Name { get; }

    public ulong GuestPhysicalAddress { get; }

    public ulong Size { get; }

    public ulong PageCount => Size >> PageShift;

    /// <summary>The KVM memory slot this block is registered as.</summary>
    public int Slot { get; }

    /// <summary>The memfd behind the block: holes in it are pages never touched or discarded.</summary>
    public SafeFd Memfd { get; }

    public MappedRegion Mapping { get; }

    /// <summary>Pages the VMM itself wrote (KVM's dirty log does not see writes through the VMM's mapping).</summary>
    public PageBitmap VmmDirty { get; }

    public ulong EndAddress => GuestPhysicalAddress + Size;

    public bool Contains(ulong gpa, ulong length) =>
        gpa >= GuestPhysicalAddress && length <= Size && gpa - GuestPhysicalAddress <= Size - length;

    public static RamBlock Create(string name, ulong guestPhysicalAddress, ulong size, int slot)
    {
        if (size == 0 || size % PageSize != 0)
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

    /// <summary>Bytes the host has actually allocated for this block (memfd blocks in use).</summary>
    public ulong AllocatedBytes()
    {
        StatBuffer stat;
        ErrnoException.Check(Libc.Fstat(Memfd.Fd, &stat), "fstat");
        return (ulong)stat.Blocks * 512;
    }

    /// <summary>
    /// The byte ranges of this block the host has allocated (memfd data, found with SEEK_DATA/SEEK_HOLE), in order.
    /// Everything else is a hole: never touched, or discarded, and reads as zero. Walking these instead of the
    /// whole block is how a migration pass avoids reading (and so allocating) memory that holds nothing.
    /// </summary>
    public IEnumerable<(ulong Offset, ulong Length)> DataExtents()
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
        if (offset % PageSize != 0 || length % PageSize != 0 || !Contains(GuestPhysicalAddress + offset, length))
            throw new ArgumentOutOfRangeException(nameof(offset), $"discard [0x{offset:X}, +0x{length:X}) is not page-aligned inside {Name}");
        ErrnoException.Check(Libc.Fallocate(Memfd.Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, (long)offset, (long)length), "fallocate(PUNCH_HOLE)");
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
