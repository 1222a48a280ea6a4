using Xunit;

namespace Ferry.Kvm.Tests;

/// <summary>
/// The anonymous huge-page backing through the block's API. Residency, not file holes, says where data is, and it
/// comes in 2 MiB pieces where the host gives huge pages (transparent huge pages "madvise" or "always"), so the
/// assertions say what must hold either way: written pages are data, a 2 MiB region never touched is not, and a
/// discard gives memory back. (Whether a read fault maps the shared zero page or allocates depends on the host:
/// these allocate, which is why the scanner reads only resident pages.) No KVM needed.
/// </summary>
public sealed class AnonymousBackingTests : IDisposable
{
    private const ulong P = Page.Size;
    private const ulong Huge = Page.ChunkSize;
    private const ulong BlockSize = 4 * Huge;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-anon-{Guid.NewGuid():N}.bin");

    public void Dispose() => File.Delete(_path);

    private static bool Covers(IEnumerable<(ulong Offset, ulong Length)> extents, ulong offset, ulong length) =>
        extents.Any(e => e.Offset <= offset && offset + length <= e.Offset + e.Length);

    private static bool Touches(IEnumerable<(ulong Offset, ulong Length)> extents, ulong offset, ulong length) =>
        extents.Any(e => e.Offset < offset + length && offset < e.Offset + e.Length);

    [Fact]
    public void The_block_is_huge_page_aligned_and_starts_with_no_data()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0, RamBackend.Anonymous);
        Assert.Equal(RamBackend.Anonymous, block.Backend);
        Assert.Equal(0L, block.Mapping.Address % (long)Huge);
        Assert.Empty(block.DataExtents());
        Assert.Equal(0UL, block.AllocatedBytes());
    }

    [Fact]
    public void Written_pages_are_data_and_untouched_huge_pages_are_not()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0, RamBackend.Anonymous);
        block.Mapping.GetSpan(Huge + 5 * P, 8).Fill(0x11);     // one word in huge page 1
        block.WriteAt(3 * Huge + 7 * P, new byte[] { 1, 2, 3 }); // part of a page in huge page 3

        var extents = block.DataExtents().ToList();
        Assert.True(Covers(extents, Huge + 5 * P, P));
        Assert.True(Covers(extents, 3 * Huge + 7 * P, P));
        Assert.False(Touches(extents, 0, Huge), "huge page 0 was never touched");
        Assert.False(Touches(extents, 2 * Huge, Huge), "huge page 2 was never touched");
        // Whatever residency granularity the host gives, no more than the two touched huge pages are allocated.
        Assert.InRange(block.AllocatedBytes(), 2 * P, 2 * Huge);
    }

    [Fact]
    public void Discard_reads_zero_gives_memory_back_and_counts_whole_huge_pages_apart()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0, RamBackend.Anonymous);
        block.Mapping.GetSpan(0, (int)(2 * Huge)).Fill(0x5A);
        var before = block.AllocatedBytes();
        Assert.True(before >= 2 * Huge, $"{before} bytes allocated after writing two huge pages");

        block.Discard(Huge, Huge);         // a whole aligned huge page
        block.Discard(3 * P, 2 * P);       // two pages inside huge page 0
        // Measured before reading the discarded pages back: on some hosts a read fault allocates a fresh page.
        Assert.Equal(before - Huge - 2 * P, block.AllocatedBytes());
        var extents = block.DataExtents().ToList();
        Assert.False(Touches(extents, Huge, Huge));
        Assert.False(Touches(extents, 3 * P, 2 * P));
        Assert.True(Covers(extents, 5 * P, Huge - 5 * P));
        Assert.False(block.Mapping.GetSpan(Huge, (int)Huge).ContainsAnyExcept((byte)0));
        Assert.False(block.Mapping.GetSpan(3 * P, 2 * (int)P).ContainsAnyExcept((byte)0));
        Assert.True(block.Mapping.GetSpan(5 * P, (int)P).IndexOfAnyExcept((byte)0x5A) < 0);
    }

    [Fact]
    public void WriteAt_lands_in_the_mapping_and_marks_nothing_VMM_dirty()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0, RamBackend.Anonymous);
        var data = Enumerable.Range(0, 3 * (int)P).Select(i => (byte)i).ToArray();
        block.WriteAt(Huge - P, data); // across a huge-page boundary
        Assert.True(block.Mapping.GetSpan(Huge - P, data.Length).SequenceEqual(data));
        Assert.Equal(0UL, block.VmmDirty.Count());
        Assert.Throws<ArgumentOutOfRangeException>(() => block.WriteAt(BlockSize - 1, new byte[2]));
    }

    [Fact]
    public void A_lazy_restore_maps_a_file_over_anonymous_memory_without_counting_it_twice()
    {
        using (var file = File.OpenHandle(_path, FileMode.CreateNew, FileAccess.Write))
        {
            RandomAccess.Write(file, Enumerable.Repeat((byte)0xF0, (int)P).ToArray(), 0);
            RandomAccess.SetLength(file, (long)BlockSize);
        }
        using var block = RamBlock.Create("ram", 0, BlockSize, 0, RamBackend.Anonymous);
        block.Mapping.GetSpan(2 * Huge, (int)Huge).Fill(0x77); // boot-time contents: gone with the old mapping
        var present = new ulong[PageSet.WordsFor(BlockSize / P)];
        present[0] = 1; // page 0
        using (var file = File.OpenHandle(_path, FileMode.Open, FileAccess.Read))
            block.MapCopyOnWrite(file, 0, present);

        Assert.True(block.IsFileMapped);
        Assert.Equal(RamBackend.Anonymous, block.Backend);
        Assert.Equal(0xF0, block.Mapping.GetSpan(0, 1)[0]);
        Assert.False(block.Mapping.GetSpan(2 * Huge, (int)Huge).ContainsAnyExcept((byte)0));
        Assert.Equal(0UL, block.AllocatedBytes());
        block.Mapping.GetSpan(Huge, 1)[0] = 9; // a private copy of one page
        Assert.Equal(P, block.AllocatedBytes());
        Assert.Equal([(0UL, P), (Huge, P)], block.DataExtents());
    }
}
