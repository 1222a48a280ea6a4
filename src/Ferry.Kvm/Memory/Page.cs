namespace Ferry.Kvm;

/// <summary>
/// The one home of the guest page size and of the chunk, the unit in which RAM is scanned, sent, written and
/// loaded. Everything that counts pages or cuts RAM into pieces uses these; a change of either is one edit here.
/// </summary>
public static class Page
{
    /// <summary>log2 of the page size.</summary>
    public const int Shift = 12;

    /// <summary>Bytes per guest page (4 KiB): the unit of KVM's dirty log, the balloon and the stream.</summary>
    public const int Size = 1 << Shift;

    /// <summary>log2 of the pages per chunk.</summary>
    public const int ChunkShift = 9;

    /// <summary>
    /// Pages per chunk: 2 MiB, one huge page, 8 page-set words, one BALLOON_BITMAP record of 64 bytes. A chunk is
    /// what one migration channel or one file writer owns at a time, so two threads never write the same page.
    /// </summary>
    public const int ChunkPages = 1 << ChunkShift;

    /// <summary>Bytes per chunk.</summary>
    public const int ChunkSize = ChunkPages * Size;

    /// <summary>Page-set words per chunk.</summary>
    public const int ChunkWords = ChunkPages / 64;

    /// <summary>Pages needed to hold <paramref name="bytes"/> (rounded up).</summary>
    public static ulong PagesFor(ulong bytes) => (bytes + Size - 1) >> Shift;

    /// <summary>Chunks needed to hold <paramref name="pages"/> pages (rounded up).</summary>
    public static ulong ChunksFor(ulong pages) => (pages + ChunkPages - 1) >> ChunkShift;

    /// <summary>The pages that the byte range [offset, offset + length) touches: the first and how many.</summary>
    public static (ulong First, ulong Count) Covering(ulong offset, ulong length) =>
        length == 0 ? (offset >> Shift, 0) : (offset >> Shift, ((offset + length - 1) >> Shift) - (offset >> Shift) + 1);

    /// <summary>Whether <paramref name="bytes"/> is a whole number of pages.</summary>
    public static bool IsAligned(ulong bytes) => (bytes & (Size - 1)) == 0;
}
