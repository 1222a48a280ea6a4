using Ferry.Kvm;
using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>The one page scanner on synthetic memory: which records a chunk's page set becomes.</summary>
public sealed class PageScannerTests
{
    /// <summary>Records what the scanner writes: (kind, first page, pages).</summary>
    private sealed class RecordingSink : IPageSink
    {
        public List<(char Kind, ulong Page, ulong Pages)> Records { get; } = [];

        public long BytesWritten { get; private set; }

        public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages)
        {
            Records.Add(('P', pageOffset / Page.Size, (ulong)pages.Length / Page.Size));
            BytesWritten += pages.Length;
        }

        public void WriteZeroRun(ushort block, ulong pageOffset, uint count) => Records.Add(('Z', pageOffset / Page.Size, count));

        public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) => Records.Add(('B', firstPage, (ulong)bitmap.Length * 8));

        public void EndPass(uint pass) { }
    }

    private static void Fill(RamBlock block, ulong first, ulong pages) =>
        block.Mapping.GetSpan(first * Page.Size, (int)(pages * Page.Size)).Fill(0x5A);

    [Fact]
    public void A_chunk_becomes_data_runs_of_at_most_256_pages_and_zero_runs_split_at_gaps_and_its_words_are_taken()
    {
        using var block = RamBlock.Create("ram-low", 0, 4UL << 20, 0); // 1024 pages: two chunks
        Fill(block, 0, 3);
        Fill(block, 6, 1);
        Fill(block, 10, 300);
        Fill(block, 520, 1);
        // Non-zero only in its last byte: the zero check looks at all of it.
        block.Mapping.GetSpan(450 * Page.Size, Page.Size)[Page.Size - 1] = 1;
        var pages = new PageSet(block.PageCount);
        pages.AddRange(0, 5);     // 0..2 data, 3..4 zero
        pages.Add(6);             // data
        pages.AddRange(10, 300);  // data: 256 + 44
        pages.AddRange(400, 2);   // zero
        pages.Add(403);           // zero, after a gap
        pages.Add(450);           // data
        pages.Add(520);           // chunk 1: not this scan's
        var sink = new RecordingSink();

        var counts = new PageScanner(new BandwidthLimiter(0)).ScanChunk(pages, block, 0, 0, sink, CancellationToken.None);

        Assert.Equal(
            [('P', 0UL, 3UL), ('Z', 3UL, 2UL), ('P', 6UL, 1UL), ('P', 10UL, 256UL), ('P', 266UL, 44UL), ('Z', 400UL, 2UL), ('Z', 403UL, 1UL), ('P', 450UL, 1UL)],
            sink.Records);
        Assert.Equal(new ChunkCounts(3 + 1 + 300 + 1, 3 + 2), counts);
        Assert.Equal(305L * Page.Size, sink.BytesWritten);
        // The chunk's pages were taken out of the set; the next chunk's are still there.
        Assert.Equal(1UL, pages.Count());
        Assert.True(pages.Contains(520));
    }

    [Fact]
    public void The_last_partial_chunk_of_a_block_is_scanned_to_the_blocks_end()
    {
        using var block = RamBlock.Create("ram-high", 4UL << 30, (512 + 70) * (ulong)Page.Size, 1); // chunk 1 holds 70 pages: two words
        Fill(block, 512 + 60, 10);
        var pages = new PageSet(block.PageCount);
        pages.AddRange(512 + 60, 10);
        var sink = new RecordingSink();

        var counts = new PageScanner(new BandwidthLimiter(0)).ScanChunk(pages, block, 1, 1, sink, CancellationToken.None);

        Assert.Equal([('P', 572UL, 10UL)], sink.Records);
        Assert.Equal(new ChunkCounts(10, 0), counts);
        Assert.Equal(0UL, pages.Count());
    }
}
