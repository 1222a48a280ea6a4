using System.Runtime.InteropServices;
using Ferry.Kvm;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Ram;

/// <summary>
/// The digest of one 2 MiB chunk that a verified migration compares (docs/migration.md, Verified migration). Page i
/// of the chunk contributes one 32-bit entry: 0 when it is left out of the comparison, the CRC32C of a zero page
/// when this side holds no data for it (a hole: never touched, discarded, a zero run), else the CRC32C of its 4 KiB.
/// The digest is the CRC32C of those entries in page order, so both sides get the same value for the same contents
/// whether a zero page is a hole on one side and allocated on the other, and holes are never read (reading one
/// would allocate it). Page CRCs are the hardware CRC32C of the stream, four pages at a time
/// (<see cref="Crc32C.ComputeEach"/>).
/// </summary>
public static class ChunkDigest
{
    /// <summary>What a page holding nothing contributes.</summary>
    public static readonly uint ZeroPageCrc = Crc32C.Compute(new byte[Page.Size]);

    /// <summary>
    /// The digest of chunk <paramref name="chunk"/> of <paramref name="block"/>. <paramref name="held"/> and
    /// <paramref name="excluded"/> are the chunk's words of the block's page sets (page i = bit i % 64 of word i / 64):
    /// pages that may hold data, and pages left out. Only held pages that are not left out are read.
    /// </summary>
    public static uint Compute(RamBlock block, long chunk, ReadOnlySpan<ulong> held, ReadOnlySpan<ulong> excluded, Span<uint> scratch)
    {
        var firstPage = (ulong)chunk * Page.ChunkPages;
        if (firstPage >= block.PageCount)
            throw new ArgumentOutOfRangeException(nameof(chunk), $"chunk {chunk} is past the end of {block.Name}");
        var pages = (int)Math.Min((ulong)Page.ChunkPages, block.PageCount - firstPage);
        var words = PageSet.WordsFor((ulong)pages);
        if (held.Length < words || excluded.Length < words || scratch.Length < pages)
            throw new ArgumentException($"chunk {chunk} of {block.Name} has {pages} pages: {held.Length} and {excluded.Length} words, {scratch.Length} entries given");
        var entries = scratch[..pages];
        var i = 0;
        while (i < pages)
        {
            if (IsSet(excluded, i))
            {
                entries[i++] = 0;
                continue;
            }
            if (!IsSet(held, i))
            {
                entries[i++] = ZeroPageCrc;
                continue;
            }
            var end = i + 1;
            while (end < pages && IsSet(held, end) && !IsSet(excluded, end))
                end++;
            Crc32C.ComputeEach(block.Mapping.GetSpan((firstPage + (ulong)i) * Page.Size, (end - i) * Page.Size), Page.Size, entries[i..end]);
            i = end;
        }
        // Native order is the little-endian order of the stream on the hosts Ferry runs on.
        return Crc32C.Compute(MemoryMarshal.AsBytes(entries));
    }

    /// <summary>The digest of a chunk of <paramref name="pages"/> pages that holds nothing and leaves nothing out.</summary>
    public static uint OfEmptyChunk(int pages)
    {
        Span<uint> entries = stackalloc uint[Page.ChunkPages];
        entries[..pages].Fill(ZeroPageCrc);
        return Crc32C.Compute(MemoryMarshal.AsBytes(entries[..pages]));
    }

    private static bool IsSet(ReadOnlySpan<ulong> words, int page) => (words[page >> 6] & (1UL << (page & 63))) != 0;
}
