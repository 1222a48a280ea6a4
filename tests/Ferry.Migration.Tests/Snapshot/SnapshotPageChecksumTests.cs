using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;
using Xunit;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>
/// Every present page carries a CRC32C in its block's page checksum area: written with the page, checked by the
/// eager load, by the lazy restore before it maps the file, and by <see cref="SnapshotFile.VerifyPages"/>.
/// </summary>
public sealed class SnapshotPageChecksumTests : IDisposable
{
    private readonly SavedSnapshot _snapshot = new();
    private readonly string _path;
    private readonly SnapshotSurgery _file;
    private readonly RamBlock[] _saved;

    /// <summary><see cref="SavedSnapshot"/>: ram-low (16 MiB: pages 0..39 and 3000..3009) and ram-high (515 pages: 512..514).</summary>
    public SnapshotPageChecksumTests() => (_path, _file, _saved) = (_snapshot.Path, _snapshot.File, _snapshot.Saved);

    public void Dispose() => _snapshot.Dispose();

    private static void DisposeAll(RamBlock[] blocks)
    {
        foreach (var block in blocks)
            block.Dispose();
    }

    /// <summary>Restores the file eagerly or lazily into fresh blocks; the refusal, or null when it restored.</summary>
    private SnapshotFormatException? Restore(bool lazy, Action<RamBlock[]>? after = null)
    {
        var blocks = SavedSnapshot.NewBlocks();
        try
        {
            using var file = SnapshotFile.Open(_path); // the metadata is intact: opening never reads a page
            if (lazy)
                file.MapInto(blocks, threads: 2);
            else
                file.LoadInto(blocks, threads: 2);
            after?.Invoke(blocks);
            return null;
        }
        catch (SnapshotFormatException e)
        {
            after?.Invoke(blocks);
            return e;
        }
        finally
        {
            DisposeAll(blocks);
        }
    }

    [Fact]
    public void Each_present_page_has_the_crc32c_of_its_slot_at_its_fixed_offset()
    {
        // Read at the offsets docs/snapshot-format.md gives, independently of the reader.
        foreach (var (block, page) in new[] { (0, 0UL), (0, 39UL), (0, 3000UL), (0, 3009UL), (1, 512UL), (1, 514UL) })
            Assert.Equal(Crc32C.Compute(_file.Read(_file.PageSlot(block, page), Page.Size)), _file.U32(_file.PageChecksum(block, page)));
        // Absent pages' entries are never written: holes, zero.
        Assert.Equal(0u, _file.U32(_file.PageChecksum(0, 40)));
        // The checksum areas are metadata: 4 KiB aligned, in front of the first page area.
        Assert.Equal(0, _file.PageChecksums(0) % 4096);
        Assert.True(_file.PageChecksums(1) + 515 * 4 <= _file.PagesOffset(0));

        Assert.Null(Restore(lazy: false, blocks => AssertSameMemory(_saved, blocks)));
        Assert.Null(Restore(lazy: true, blocks => AssertSameMemory(_saved, blocks)));
        using var file = SnapshotFile.Open(_path);
        var verified = file.VerifyPages(threads: 3);
        Assert.Equal((53L, 53L * Page.Size, 0L, true), (verified.PagesChecked, verified.BytesChecked, verified.BadPages, verified.Passed));
        Assert.Empty(verified.FirstBadPages);
    }

    [Fact]
    public void Pages_rewritten_by_later_passes_and_by_racing_writers_keep_checksums_that_match()
    {
        using (var writer = SnapshotWriter.Create(_path, [new BlockDescriptor("ram-low", 16 * MiB)]))
        {
            var page = new byte[Page.Size];
            for (byte pass = 1; pass <= 3; pass++)
            {
                page.AsSpan().Fill(pass);
                writer.WritePages(0, 7, page);
            }
            // A run across a 2 MiB chunk boundary (pages 500..523), then 64 writes of one page racing on parallel threads.
            writer.WritePages(0, 500, [.. Enumerable.Range(0, 24 * Page.Size).Select(i => (byte)(i / Page.Size + 1))]);
            Parallel.For(0, 64, i => writer.WritePages(0, 9, Enumerable.Repeat((byte)(i + 1), Page.Size).ToArray()));
            writer.Finish([]);
        }

        using var file = SnapshotFile.Open(_path);
        Assert.True(file.VerifyPages(threads: 2).Passed);
        using var target = RamBlock.Create("ram-low", 0, 16 * MiB, 0);
        file.LoadInto([target], threads: 2);
        Assert.True(target.Mapping.GetSpan(7 * Page.Size, Page.Size).IndexOfAnyExcept((byte)3) < 0);
        Assert.Equal((byte)24, target.Mapping.GetSpan(523 * Page.Size, 1)[0]);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void One_flipped_bit_in_a_page_refuses_the_restore_naming_block_and_page(bool lazy)
    {
        _file.Flip(_file.PageSlot(0, 3004) + 1234, 0x08);
        var e = Restore(lazy, blocks =>
        {
            // A lazy restore maps nothing when a page is bad.
            if (lazy)
                Assert.Equal(0UL, blocks[0].FileMappedPages + blocks[1].FileMappedPages);
        });
        Assert.NotNull(e);
        Assert.Equal(SnapshotFault.PageChecksum, e.Fault);
        Assert.Contains(_path, e.Message);
        Assert.Contains("block 'ram-low' page 3004: page checksum mismatch", e.Message);

        _file.Flip(_file.PageSlot(0, 3004) + 1234, 0x08);
        _file.Flip(_file.PageSlot(1, 514) + Page.Size - 1, 0x80); // the last byte of the last page
        e = Restore(lazy);
        Assert.Equal(SnapshotFault.PageChecksum, e?.Fault);
        Assert.Contains("block 'ram-high' page 514", e!.Message);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_damaged_checksum_entry_refuses_the_restore(bool lazy)
    {
        _file.Flip(_file.PageChecksum(0, 20) + 3, 0x01);
        var e = Restore(lazy);
        Assert.Equal(SnapshotFault.PageChecksum, e?.Fault);
        Assert.Contains("block 'ram-low' page 20: page checksum mismatch", e!.Message);

        // A checksum 4 KiB of the area zeroed (a lost write): every present page in it is refused.
        _file.Flip(_file.PageChecksum(0, 20) + 3, 0x01);
        _file.Write(_file.PageChecksums(0), new byte[Page.Size]);
        Assert.Equal(SnapshotFault.PageChecksum, Restore(lazy)?.Fault);
    }

    [Fact]
    public void Damage_to_an_absent_page_slot_changes_nothing()
    {
        // Page 100 is absent: its slot is never read (eager) and is zeroed in the VM's copy (lazy).
        _file.Write(_file.PageSlot(0, 100), Enumerable.Repeat((byte)0xAB, Page.Size).ToArray());
        Assert.Null(Restore(lazy: false, blocks => AssertSameMemory(_saved, blocks)));
        Assert.Null(Restore(lazy: true, blocks => AssertSameMemory(_saved, blocks)));
    }

    [Fact]
    public void Verify_pages_finds_exactly_the_bad_pages_and_inspect_fails_with_them()
    {
        var bad = new[] { (0, 0UL), (0, 39UL), (0, 3005UL), (1, 513UL) };
        foreach (var (block, page) in bad)
            _file.Flip(_file.PageSlot(block, page) + (long)page % Page.Size, 0x10);
        _file.Flip(_file.PageSlot(0, 41), 0x10); // absent: not a bad page

        using var file = SnapshotFile.Open(_path);
        var verified = file.VerifyPages(threads: 2);
        Assert.Equal(53, verified.PagesChecked);
        Assert.Equal(4, verified.BadPages);
        Assert.False(verified.Passed);
        Assert.Equal(bad.Select(b => (b.Item1 == 0 ? "ram-low" : "ram-high", b.Item2)), verified.FirstBadPages.Select(p => (p.Block, p.Page)));
        foreach (var page in verified.FirstBadPages)
            Assert.NotEqual(page.Stored, page.Computed);

        var inspection = file.Inspect(verifyPages: true, threads: 2);
        Assert.Equal(1, inspection.ExitCode);
        Assert.Equal(4, inspection.Pages!.BadPages);
        var text = inspection.Format();
        Assert.Contains("pages: 53 checked", text);
        Assert.Contains("4 bad", text);
        Assert.Contains("bad page: block 'ram-high' page 513", text);
        var json = inspection.Pages.ToJson();
        Assert.False(json["passed"]!.GetValue<bool>());
        Assert.Equal(4, json["bad-pages"]!.GetValue<long>());
        Assert.Equal(3005UL, json["first-bad-pages"]![2]!["page"]!.GetValue<ulong>());

        Assert.Equal(0, file.Inspect().ExitCode); // without --verify the pages are not read
    }

    [Fact]
    public void Interleaved_page_checksums_equal_one_at_a_time()
    {
        var random = new Random(3);
        foreach (var pages in new[] { 1, 3, 4, 5, 8, 11 })
        {
            var data = new byte[pages * Page.Size];
            random.NextBytes(data);
            var crcs = new uint[pages];
            Crc32C.ComputeEach(data, Page.Size, crcs);
            for (var i = 0; i < pages; i++)
                Assert.Equal(Crc32C.Compute(data.AsSpan(i * Page.Size, Page.Size)), crcs[i]);
        }
        var known = new uint[1];
        Crc32C.ComputeEach("123456789\0\0\0\0\0\0\0"u8, 16, known);
        Assert.Equal(Crc32C.Compute("123456789\0\0\0\0\0\0\0"u8), known[0]);
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8)); // the CRC32C check value
        Assert.Throws<ArgumentException>(() => Crc32C.ComputeEach(new byte[100], Page.Size, new uint[1]));
    }
}
