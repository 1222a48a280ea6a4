using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// A memfd mapped shared into the VMM: the backing every block starts on. A hole in the memfd is a page never
/// touched or discarded, so the memfd itself answers where data is (SEEK_DATA/SEEK_HOLE), how much is allocated
/// (st_blocks) and discards (punch hole). Owns the memfd; the mapping belongs to the block.
/// </summary>
internal sealed unsafe class MemfdBacking : RamBacking
{
    private readonly SafeFd _memfd;
    private readonly ulong _size;

    private MemfdBacking(SafeFd memfd, ulong size)
    {
        _memfd = memfd;
        _size = size;
    }

    /// <summary>
    /// Creates a memfd of <paramref name="size"/> bytes and maps it shared (MAP_NORESERVE: nothing is allocated
    /// until touched). The caller owns the returned mapping, the backing owns the memfd.
    /// </summary>
    public static (MemfdBacking Backing, MappedRegion Mapping) Map(string name, ulong size)
    {
        var memfd = SafeFd.FromResult(Libc.MemfdCreate("ferry:" + name, Libc.MFD_CLOEXEC), "memfd_create");
        try
        {
            ErrnoException.Check(Libc.Ftruncate(memfd.Fd, (long)size), "ftruncate");
            var mapping = MappedRegion.Map(memfd, size, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED | Libc.MAP_NORESERVE);
            return (new MemfdBacking(memfd, size), mapping);
        }
        catch
        {
            memfd.Dispose();
            throw;
        }
    }

    /// <summary>The memfd's data extents (tmpfs allocates whole pages, so they are page-granular).</summary>
    public override IEnumerable<(ulong Offset, ulong Length)> DataExtents()
    {
        foreach (var (offset, length) in FileExtents.Data(_memfd, 0, (long)_size))
            yield return ((ulong)offset, (ulong)length);
    }

    public override void Discard(ulong offset, ulong length) =>
        ErrnoException.Check(Libc.Fallocate(_memfd.Fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, (long)offset, (long)length), "fallocate(PUNCH_HOLE)");

    /// <summary>
    /// Writes through the memfd (pwrite), not through the mapping: for pages not yet allocated this skips a page
    /// fault per page (about half the cost on these hosts).
    /// </summary>
    public override void WriteAt(ulong offset, ReadOnlySpan<byte> data)
    {
        fixed (byte* start = data)
        {
            var done = 0;
            while (done < data.Length)
            {
                var n = Libc.PWrite(_memfd.Fd, start + done, (nuint)(data.Length - done), (long)offset + done);
                if (n < 0)
                {
                    var errno = Libc.LastErrno;
                    if (errno == Libc.EINTR)
                        continue;
                    throw new ErrnoException("pwrite", errno);
                }
                done += (int)n;
            }
        }
    }

    /// <summary>Whatever boot set-up wrote into the memfd is dead once a file is mapped over the range.</summary>
    public override void MappedOver() => Discard(0, _size);

    public override ulong AllocatedBytes()
    {
        StatBuffer stat;
        ErrnoException.Check(Libc.Fstat(_memfd.Fd, &stat), "fstat");
        return (ulong)stat.Blocks * 512;
    }

    public override void Dispose() => _memfd.Dispose();
}
