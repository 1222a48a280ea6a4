using System.Buffers;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Interop;

/// <summary>
/// Reads this process's /proc/self/pagemap: one 64-bit entry per virtual page. Ferry uses it to find the pages of a
/// private file mapping that the process owns a copy of (written since the mapping was made), which no file-level
/// call (SEEK_DATA, fstat) can tell. Only the flag bits are used; they need no privilege (the frame numbers do).
/// </summary>
public static class PageMap
{
    private const ulong Present = 1UL << 63;
    private const ulong Swapped = 1UL << 62;
    private const ulong FileOrSharedAnonymous = 1UL << 61;
    private const ulong Exclusive = 1UL << 56;
    private const ulong PfnMask = (1UL << 55) - 1;

    /// <summary>
    /// The frame numbers of the kernel's shared zero pages (the 4 KiB one, and the first frame of the huge one),
    /// found once by reading untouched memory; 0 where frame numbers are hidden (no CAP_SYS_ADMIN) or unknown.
    /// Needed because newer kernels report a mapped zero page as present and exclusively mapped, exactly like a
    /// page the process owns.
    /// </summary>
    private static readonly Lazy<(ulong Small, ulong Huge)> ZeroPfns = new(FindZeroPfns);

    /// <summary>Entries read per pread (512 KiB): keeps the buffer small and the number of calls low.</summary>
    private const int EntriesPerRead = 64 * 1024;

    /// <summary>
    /// For the <paramref name="pageCount"/> pages from <paramref name="address"/>, sets bit i of
    /// <paramref name="into"/> (when not empty) for each page that is private anonymous memory in RAM or swap:
    /// a page this process wrote into a private mapping, and (unless <paramref name="allocatedOnly"/>) a page
    /// that maps the shared zero page because it was only read. Callers looking for data must include the latter
    /// (cheap, and a fork could make a written page look shared); callers counting memory exclude it.
    /// Returns how many such pages there are.
    /// </summary>
    public static ulong PrivatePages(nint address, ulong pageCount, Span<ulong> into, bool allocatedOnly = false)
    {
        if (address % 4096 != 0)
            throw new ArgumentOutOfRangeException(nameof(address), $"address 0x{address:X} is not page-aligned");
        if (!into.IsEmpty && (ulong)into.Length * 64 < pageCount)
            throw new ArgumentException($"a {into.Length}-word bitmap is too short for {pageCount} pages", nameof(into));
        using var pagemap = File.OpenHandle("/proc/self/pagemap", FileMode.Open, FileAccess.Read);
        var buffer = ArrayPool<ulong>.Shared.Rent(EntriesPerRead);
        try
        {
            ulong found = 0;
            var firstEntry = (ulong)address / 4096;
            for (ulong done = 0; done < pageCount;)
            {
                var count = (int)Math.Min((ulong)EntriesPerRead, pageCount - done);
                var entries = buffer.AsSpan(0, count);
                ReadEntries(pagemap, (long)((firstEntry + done) * 8), entries);
                for (var i = 0; i < entries.Length; i++)
                {
                    var entry = entries[i];
                    if ((entry & (Present | Swapped)) == 0 || (entry & FileOrSharedAnonymous) != 0)
                        continue;
                    // A read-only touch maps the shared zero page: it holds nothing and costs nothing. Older kernels
                    // never call it exclusively mapped; newer ones do, and then only its frame number tells.
                    if (allocatedOnly && (entry & Present) != 0 && ((entry & Exclusive) == 0 || IsZeroPfn(entry & PfnMask)))
                        continue;
                    found++;
                    if (!into.IsEmpty)
                    {
                        var page = done + (ulong)i;
                        into[(int)(page >> 6)] |= 1UL << (int)(page & 63);
                    }
                }
                done += (ulong)count;
            }
            return found;
        }
        finally
        {
            ArrayPool<ulong>.Shared.Return(buffer);
        }
    }

    private static bool IsZeroPfn(ulong pfn)
    {
        if (pfn == 0)
            return false; // frame numbers hidden: counted as allocated (an overestimate, never an underestimate)
        var (small, huge) = ZeroPfns.Value;
        return pfn == small || (huge != 0 && pfn >= huge && pfn < huge + 512);
    }

    /// <summary>
    /// Reads one byte in each of two fresh regions, without and then with huge pages, and keeps a frame number only
    /// when both reads mapped the same frame: that is the shared zero page. Some hosts allocate a real page on a
    /// read fault (seen on these); then nothing is excluded, since a frame freed here could later hold data.
    /// </summary>
    private static unsafe (ulong Small, ulong Huge) FindZeroPfns()
    {
        const ulong HugeSize = 2UL << 20;
        try
        {
            using var region = MappedRegion.MapAnonymousAligned(4 * HugeSize, HugeSize);
            Libc.Madvise(region.Address, (nuint)(2 * HugeSize), Libc.MADV_NOHUGEPAGE);
            Libc.Madvise(region.Address + (nint)(2 * HugeSize), (nuint)(2 * HugeSize), Libc.MADV_HUGEPAGE);
            using var pagemap = File.OpenHandle("/proc/self/pagemap", FileMode.Open, FileAccess.Read);
            ulong ReadPfn(ulong offset)
            {
                _ = Volatile.Read(ref *(byte*)(region.Address + (nint)offset));
                Span<ulong> entry = stackalloc ulong[1];
                ReadEntries(pagemap, (long)(((ulong)region.Address + offset) / 4096 * 8), entry);
                return (entry[0] & Present) != 0 ? entry[0] & PfnMask : 0;
            }
            var small = ReadPfn(0);
            small = small != 0 && ReadPfn(HugeSize) == small ? small : 0;
            var huge = ReadPfn(2 * HugeSize);
            huge = huge != 0 && huge != small && ReadPfn(3 * HugeSize) == huge ? huge : 0;
            return (small, huge);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ErrnoException)
        {
            return (0, 0);
        }
    }

    private static void ReadEntries(SafeFileHandle pagemap, long offset, Span<ulong> entries)
    {
        var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(entries);
        var read = 0;
        while (read < bytes.Length)
        {
            var n = RandomAccess.Read(pagemap, bytes[read..], offset + read);
            if (n <= 0)
                throw new IOException($"/proc/self/pagemap ended after {read} of {bytes.Length} bytes at offset {offset}");
            read += n;
        }
    }
}
