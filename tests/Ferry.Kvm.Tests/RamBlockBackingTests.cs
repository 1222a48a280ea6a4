using Xunit;

namespace Ferry.Kvm.Tests;

/// <summary>
/// Each backing through the block's own API: where data is, what a discard gives back, what a bulk write does
/// (lands, and is not a VMM write for the dirty log), and allocated bytes. No KVM needed.
/// </summary>
public sealed class RamBlockBackingTests : IDisposable
{
    private const ulong P = Page.Size;
    private const ulong BlockSize = 64 * P;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-backing-{Guid.NewGuid():N}.bin");

    public void Dispose() => File.Delete(_path);

    private static byte[] Bytes(byte value, ulong length) => Enumerable.Repeat(value, (int)length).ToArray();

    [Theory]
    [InlineData(RamBackend.Memfd)]
    [InlineData(RamBackend.Anonymous)]
    public void Discards_count_whole_2_MiB_chunks_apart_from_scattered_pages_and_really_free_memory(RamBackend backend)
    {
        const ulong chunk = Page.ChunkSize;
        using var block = RamBlock.Create("ram", 0, 8 * chunk, 0, backend);
        block.Mapping.GetSpan(0, (int)(8 * chunk)).Fill(0x5A);
        var before = block.AllocatedBytes();
        Assert.Equal(8 * chunk, before);

        block.Discard(2 * chunk, 2 * chunk);                 // two whole aligned chunks
        block.Discard(5 * chunk + 3 * P, 7 * P);             // scattered pages inside one chunk
        block.Discard(6 * chunk - 2 * P, chunk + 4 * P);     // 2 pages, one whole chunk, 2 pages

        Assert.Equal(3L, block.WholeChunksDiscarded);
        Assert.Equal(7L + 2 + 2, block.ScatteredPagesDiscarded);
        // The whole chunks are given back at once on both backings (what the host really holds, not RSS).
        Assert.True(block.AllocatedBytes() <= before - 3 * chunk, $"{block.AllocatedBytes()} bytes still allocated");
        Assert.True(block.Mapping.GetSpan(2 * chunk, (int)chunk).IndexOfAnyExcept((byte)0) < 0);
    }

    [Fact]
    public void Memfd_block_written_pages_are_its_data_extents_and_its_allocation()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0);
        Assert.False(block.IsFileMapped);
        Assert.Empty(block.DataExtents());
        Assert.Equal(0UL, block.AllocatedBytes());

        block.Mapping.GetSpan(3 * P, 2 * (int)P).Fill(0x11);   // the guest (or anyone) through the mapping
        block.WriteAt(10 * P + 100, Bytes(0x22, 10));           // part of a page: the whole page is data
        block.WriteAt(63 * P, Bytes(0x33, P));                  // the last page

        Assert.Equal([(3 * P, 2 * P), (10 * P, P), (63 * P, P)], block.DataExtents());
        Assert.Equal(4 * P, block.AllocatedBytes());
        Assert.Equal(0UL, block.FileMappedPages);
        Assert.Equal(0L, block.DiscardsZeroFilled);
    }

    [Fact]
    public void Memfd_block_discard_punches_the_pages_out_of_its_extents_and_allocation()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0);
        block.WriteAt(2 * P, Bytes(0x44, 4 * P));
        block.Discard(3 * P, 2 * P);

        Assert.Equal([(2 * P, P), (5 * P, P)], block.DataExtents());
        Assert.Equal(2 * P, block.AllocatedBytes());
        Assert.False(block.Mapping.GetSpan(3 * P, 2 * (int)P).ContainsAnyExcept((byte)0));
        block.Discard(0, BlockSize);
        Assert.Empty(block.DataExtents());
        Assert.Equal(0UL, block.AllocatedBytes());
    }

    [Fact]
    public void Memfd_block_WriteAt_lands_in_the_mapping_and_marks_nothing_VMM_dirty()
    {
        using var block = RamBlock.Create("ram", 0, BlockSize, 0);
        var data = Enumerable.Range(0, 3 * (int)P).Select(i => (byte)i).ToArray();
        block.WriteAt(7 * P + 5, data);

        Assert.True(block.Mapping.GetSpan(7 * P + 5, data.Length).SequenceEqual(data));
        Assert.Equal(0UL, block.VmmDirty.Count()); // a load (migration, restore), not a VMM write to track
        Assert.Throws<ArgumentOutOfRangeException>(() => block.WriteAt(BlockSize - 1, new byte[2]));
    }

    /// <summary>A block mapped from a file whose pages 0..3 are present (0xF0 + page) and the rest a hole.</summary>
    private RamBlock FileMappedBlock()
    {
        using (var file = File.OpenHandle(_path, FileMode.CreateNew, FileAccess.Write))
        {
            for (var page = 0UL; page < 4; page++)
                RandomAccess.Write(file, Bytes((byte)(0xF0 + page), P), (long)(page * P));
            RandomAccess.SetLength(file, (long)BlockSize);
        }
        var block = RamBlock.Create("ram", 0, BlockSize, 0);
        block.WriteAt(20 * P, Bytes(0x77, 8 * P)); // on the memfd: given back by the mapping
        using (var file = File.OpenHandle(_path, FileMode.Open, FileAccess.Read))
            block.MapCopyOnWrite(file, 0, [0xFUL]);
        return block;
    }

    [Fact]
    public void File_mapped_block_WriteAt_lands_marks_nothing_VMM_dirty_and_is_counted()
    {
        using var block = FileMappedBlock();
        Assert.True(block.IsFileMapped);
        Assert.Equal(0UL, block.AllocatedBytes()); // the memfd's pages were given back; file pages are page cache

        block.WriteAt(2 * P, Bytes(0x12, P));  // over a file page: a private copy
        block.WriteAt(30 * P, Bytes(0x34, P)); // into a hole

        Assert.True(block.Mapping.GetSpan(2 * P, (int)P).IndexOfAnyExcept((byte)0x12) < 0);
        Assert.True(block.Mapping.GetSpan(30 * P, (int)P).IndexOfAnyExcept((byte)0x34) < 0);
        Assert.Equal(0UL, block.VmmDirty.Count());
        Assert.Equal([(0UL, 4 * P), (30 * P, P)], block.DataExtents());
        Assert.Equal(2 * P, block.AllocatedBytes());
        Assert.Equal(4UL, block.FileMappedPages);
    }

    [Fact]
    public void File_mapped_block_discard_gives_back_private_copies_and_file_slots()
    {
        using var block = FileMappedBlock();
        block.WriteAt(2 * P, Bytes(0x12, P));
        block.WriteAt(30 * P, Bytes(0x34, P));
        block.Discard(2 * P, P);
        block.Discard(30 * P, P);

        Assert.Equal([(0UL, 2 * P), (3 * P, P)], block.DataExtents());
        Assert.Equal(0UL, block.AllocatedBytes());
        Assert.Equal(3UL, block.FileMappedPages);
        Assert.True(block.Mapping.GetSpan(2 * P, (int)P).IndexOfAnyExcept((byte)0) < 0);
        Assert.True(block.Mapping.GetSpan(20 * P, 8 * (int)P).IndexOfAnyExcept((byte)0) < 0);
    }
}
