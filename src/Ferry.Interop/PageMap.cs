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
                    // The zero page has no struct page to own, so it is never "exclusively mapped".
                    if (allocatedOnly && (entry & Present) != 0 && (entry & Exclusive) == 0)
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
