using Microsoft.Win32.SafeHandles;
using Xunit;

namespace Ferry.Kvm.Tests;

/// <summary>
/// A block mapped copy-on-write from a file (lazy restore): what it reads, what writes do to the file, what a
/// discard must never bring back, and which pages it reports as holding data. No KVM needed.
/// </summary>
public sealed class RamBlockFileMappingTests : IDisposable
{
    private const int Page = 4096;
    private const ulong AreaOffset = 1 << 20;       // the page area, 1 MiB into the file like a snapshot's
    private const int BlockPages = 256;             // 1 MiB block
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-cow-{Guid.NewGuid():N}.bin");

    public void Dispose() => File.Delete(_path);

    private static byte Pattern(int page) => (byte)(0x40 + page);

    /// <summary>
    /// The file: junk before the page area; pages 0..7 and 12 present with a pattern; pages 8..11 hold data
    /// although the bitmap calls them absent (a damaged file); the rest is a hole.
    /// </summary>
    private ulong[] WriteFile()
    {
        using (var stream = new FileStream(_path, FileMode.CreateNew, FileAccess.Write))
        {
            stream.Write(Enumerable.Repeat((byte)0xEE, Page).ToArray());
            foreach (var page in Enumerable.Range(0, 13))
            {
                stream.Position = (long)AreaOffset + page * Page;
                stream.Write(Enumerable.Repeat(Pattern(page), Page).ToArray());
            }
            stream.SetLength((long)AreaOffset + BlockPages * Page);
        }
        var present = new ulong[BlockPages / 64];
        present[0] = 0xFFUL | (1UL << 12);
        return present;
    }

    private SafeFileHandle OpenFile() => File.OpenHandle(_path, FileMode.Open, FileAccess.Read);

    private static bool PageIs(RamBlock block, int page, byte value) =>
        !block.Mapping.GetSpan((ulong)page * Page, Page).ContainsAnyExcept(value);

    private RamBlock MappedBlock()
    {
        var present = WriteFile();
        var block = RamBlock.Create("ram", 0, BlockPages * Page, 0);
        block.Mapping.GetSpan(200 * Page, Page).Fill(0x77); // what boot set-up wrote: gone after the mapping
        using var file = OpenFile();
        block.MapCopyOnWrite(file, AreaOffset, present);
        return block;
    }

    [Fact]
    public void Present_pages_read_from_the_file_and_everything_else_reads_zero()
    {
        using var block = MappedBlock();
        Assert.True(block.IsFileMapped);
        for (var page = 0; page < 8; page++)
            Assert.True(PageIs(block, page, Pattern(page)), $"page {page}");
        Assert.True(PageIs(block, 12, Pattern(12)));
        for (var page = 8; page < 12; page++)
            Assert.True(PageIs(block, page, 0), $"page {page}: absent in the bitmap, so the data in its slot must not show");
        Assert.True(PageIs(block, 13, 0));
        Assert.True(PageIs(block, 200, 0), "the memfd's old contents showed through");
        Assert.Equal(4UL * Page, block.AllocatedBytes()); // only the 4 zeroed damaged slots are private copies
    }

    [Fact]
    public void Writes_go_to_private_copies_and_never_reach_the_file()
    {
        using var block = MappedBlock();
        var before = File.ReadAllBytes(_path);
        block.Mapping.GetSpan(0, Page).Fill(0x11);
        block.WriteAt(5 * Page, Enumerable.Repeat((byte)0x22, 2 * Page).ToArray());
        block.WriteAt(100 * Page, Enumerable.Repeat((byte)0x33, Page).ToArray());

        Assert.True(PageIs(block, 0, 0x11));
        Assert.True(PageIs(block, 5, 0x22) && PageIs(block, 6, 0x22) && PageIs(block, 100, 0x33));
        Assert.Equal(before, File.ReadAllBytes(_path));
        Assert.Equal((4UL + 4) * Page, block.AllocatedBytes());
    }

    [Fact]
    public void A_discarded_page_reads_zero_and_never_brings_back_the_files_old_contents()
    {
        using var block = MappedBlock();
        block.Discard(1 * Page, Page);                       // untouched page read through the file
        block.Mapping.GetSpan(3 * Page, Page).Fill(0x99);    // written, then discarded
        block.Discard(3 * Page, Page);
        block.Discard(9 * Page, Page);                       // a damaged slot that had been zeroed
        block.Mapping.GetSpan(50 * Page, Page).Fill(0x55);   // a hole's page written, then discarded
        block.Discard(50 * Page, Page);

        foreach (var page in new[] { 1, 3, 9, 50 })
            Assert.True(PageIs(block, page, 0), $"page {page} is not zero after its discard");
        Assert.True(PageIs(block, 2, Pattern(2)), "a discard spilled onto its neighbour");

        // Discarded again after reuse (a balloon inflating the page a second time): still zero, not the file's.
        block.Mapping.GetSpan(1 * Page, Page).Fill(0x12);
        block.Discard(0, 4 * Page);
        for (var page = 0; page < 4; page++)
            Assert.True(PageIs(block, page, 0), $"page {page}");
        Assert.Equal(0L, block.DiscardsZeroFilled);
    }

    [Fact]
    public void Data_extents_are_the_file_slots_still_mapped_plus_the_pages_written_since()
    {
        using var block = MappedBlock();
        Assert.Equal([(0UL, 13UL * Page)], block.DataExtents());

        block.Mapping.GetSpan(100 * Page, Page)[7] = 1;      // a write into a hole
        block.Discard(2 * Page, 2 * Page);                   // two file pages given back
        Assert.Equal([(0UL, 2UL * Page), (4UL * Page, 9UL * Page), (100UL * Page, (ulong)Page)], block.DataExtents());
        Assert.Equal(11UL, block.FileMappedPages); // slots 0..12 (8..11 zeroed but still marked) minus the two discarded
    }

    [Fact]
    public void Bad_arguments_are_refused_with_the_value_named()
    {
        var present = WriteFile();
        using var block = RamBlock.Create("ram", 0, BlockPages * Page, 0);
        using var file = OpenFile();
        var unaligned = Assert.Throws<ArgumentOutOfRangeException>(() => block.MapCopyOnWrite(file, AreaOffset + 512, present));
        Assert.Contains((AreaOffset + 512).ToString(System.Globalization.CultureInfo.InvariantCulture), unaligned.Message);
        var shortBitmap = Assert.Throws<ArgumentException>(() => block.MapCopyOnWrite(file, AreaOffset, present.AsSpan(1)));
        Assert.Contains("3 words", shortBitmap.Message);
        var pastEnd = Assert.Throws<ArgumentOutOfRangeException>(() => block.MapCopyOnWrite(file, AreaOffset + Page, present));
        Assert.Contains("too short", pastEnd.Message);
        Assert.False(block.IsFileMapped);
        block.MapCopyOnWrite(file, AreaOffset, present);
        Assert.Throws<InvalidOperationException>(() => block.MapCopyOnWrite(file, AreaOffset, present));
    }
}
