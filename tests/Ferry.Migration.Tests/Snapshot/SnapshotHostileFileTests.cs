using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Xunit;
using Xunit.Abstractions;
using static Ferry.Migration.Tests.Snapshot.SnapshotFixtures;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>
/// Hostile snapshot files: each fault is refused by <see cref="SnapshotFile.Open"/> (or, for a page, by the load)
/// with a <see cref="SnapshotFormatException"/> whose message names it, nothing else is ever thrown, and a damaged
/// file either is refused or restores exactly what was saved.
/// </summary>
public sealed class SnapshotHostileFileTests : IDisposable
{
    private readonly ITestOutputHelper _output;
    private readonly SavedSnapshot _snapshot = new();
    private readonly string _path;
    private readonly SnapshotSurgery _file;
    private readonly RamBlock[] _saved; // the memory the file holds

    /// <summary>A good file (<see cref="SavedSnapshot"/>): ram-low (16 MiB) and ram-high (515 pages, a partial last word), four state sections.</summary>
    public SnapshotHostileFileTests(ITestOutputHelper output)
    {
        _output = output;
        (_path, _file, _saved) = (_snapshot.Path, _snapshot.File, _snapshot.Saved);
        using var check = SnapshotFile.Open(_path); // the baseline opens
    }

    public void Dispose() => _snapshot.Dispose();

    /// <summary>
    /// Restores whatever is in the file now, eagerly and lazily: each either is refused (a
    /// <see cref="SnapshotFormatException"/>, nothing else) or holds exactly the saved memory and state, and both
    /// agree. Returns the fault, or null when the file restored.
    /// </summary>
    private SnapshotFault? RestoreOrRefuse()
    {
        SnapshotFault? Restore(bool lazy)
        {
            var blocks = SavedSnapshot.NewBlocks();
            try
            {
                using var file = SnapshotFile.Open(_path);
                file.Inspect();
                var loaded = lazy ? file.MapInto(blocks, threads: 2) : file.LoadInto(blocks, threads: 2);
                AssertSameMemory(_saved, blocks);
                Assert.Equal(SampleState().Select(s => (s.Kind, s.Index, s.Name, Convert.ToHexString(s.Blob))),
                    loaded.State.Select(s => (s.Kind, s.Index, s.Name, Convert.ToHexString(s.Blob))));
                return null;
            }
            catch (SnapshotFormatException e)
            {
                Assert.False(string.IsNullOrWhiteSpace(e.Message));
                return e.Fault;
            }
            finally
            {
                foreach (var block in blocks)
                    block.Dispose();
            }
        }
        var eager = Restore(lazy: false);
        var lazy = Restore(lazy: true);
        Assert.True(eager == lazy, $"eager restore: {eager?.ToString() ?? "restored"}, lazy: {lazy?.ToString() ?? "restored"}");
        return eager;
    }

    private SnapshotFormatException Refused(SnapshotFault fault, string fragment)
    {
        var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_path).Dispose());
        Assert.True(e.Fault == fault, $"expected {fault}, got {e.Fault}: {e.Message}");
        Assert.Contains(fragment, e.Message);
        Assert.Contains(_path, e.Message);
        return e;
    }

    [Fact]
    public void A_file_truncated_anywhere_is_refused_as_truncated()
    {
        var length = _file.Length;
        var points = new List<long> { 0, 1, 7, 8, 12, 64, 95, 127, 128, 4096, _file.Entry(1) + 10, _file.PresentBitmap(0) + 1,
            _file.PagesOffset(0), _file.PagesOffset(0) + 40 * Page.Size, _file.PagesOffset(1) + 1, _file.StateOffset, _file.StateOffset + 17, length - 1 };
        var original = _file.Read(0, (int)Math.Min(length, (long)(2 * MiB)));
        foreach (var point in points)
        {
            _file.Truncate(point);
            var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_path));
            Assert.True(e.Fault == SnapshotFault.Truncated, $"truncated at {point}: {e.Fault}: {e.Message}");
            Assert.Contains("truncated", e.Message);
            // Restore it for the next point (the metadata region; pages beyond are holes or the pattern below).
            _file.Truncate(0);
            _file.Write(0, original);
            _file.Truncate(length);
        }
    }

    [Fact]
    public void A_file_shorter_than_the_header_names_both_sizes()
    {
        _file.Truncate(100);
        Refused(SnapshotFault.Truncated, "the file is 100 bytes, shorter than the 128-byte header");
    }

    [Fact]
    public void Bytes_after_the_end_the_header_gives_are_refused()
    {
        using (var stream = new FileStream(_path, FileMode.Append))
            stream.Write([1, 2, 3]);
        Refused(SnapshotFault.TrailingData, "3 more than its header says");
    }

    [Fact]
    public void Wrong_magic_is_refused()
    {
        _file.Write(0, "NOTASNAP"u8);
        Refused(SnapshotFault.BadMagic, "wrong magic");
    }

    [Fact]
    public void A_ferry_migration_stream_is_not_a_snapshot()
    {
        _file.Write(0, "FERRYMIG"u8);
        Refused(SnapshotFault.BadMagic, "not a Ferry snapshot");
    }

    [Fact]
    public void An_unsupported_version_is_refused_before_its_checksum_is_looked_at()
    {
        _file.SetU32(8, 3);
        Refused(SnapshotFault.UnsupportedVersion, "unsupported version 3 (this Ferry reads version 2)");
    }

    [Fact]
    public void A_version_1_file_is_refused_as_predating_page_checksums()
    {
        _file.SetU32(8, 1);
        _file.ResealHeader();
        var e = Refused(SnapshotFault.UnsupportedVersion, "unsupported version 1: it predates page checksums");
        Assert.Contains("re-save the VM with this Ferry", e.Message);
    }

    [Fact]
    public void Any_flipped_header_byte_is_a_header_checksum_mismatch()
    {
        foreach (var offset in new[] { 12, 16, 20, 24, 33, 40, 48, 56, 60, 64, 71, 80, 91 })
        {
            _file.Flip(offset);
            Refused(SnapshotFault.HeaderChecksum, "header checksum mismatch");
            _file.Flip(offset);
        }
        _file.Flip(SnapshotSurgery.HeaderCrcOffset + 2);
        Refused(SnapshotFault.HeaderChecksum, "header checksum mismatch");
    }

    [Fact]
    public void A_missing_completion_mark_is_refused_as_not_finished()
    {
        _file.Write(SnapshotSurgery.MarkOffset, new byte[16]);
        Refused(SnapshotFault.NotFinished, "not finished: the completion mark is missing");
    }

    [Fact]
    public void A_torn_or_foreign_completion_mark_is_refused()
    {
        foreach (var offset in new[] { 0, 7, 8, 12, 15 })
        {
            _file.Flip(SnapshotSurgery.MarkOffset + offset);
            Refused(SnapshotFault.CompletionMark, "completion mark is corrupt");
            _file.Flip(SnapshotSurgery.MarkOffset + offset);
        }
        // A header changed after the mark was written (re-sealed, but the mark names the old checksum).
        _file.SetU32(SnapshotSurgery.StateCountOffset, 3);
        var crc = Ferry.Migration.Stream.Crc32C.Compute(_file.Read(0, SnapshotSurgery.HeaderCrcOffset));
        _file.SetU32(SnapshotSurgery.HeaderCrcOffset, crc);
        Refused(SnapshotFault.CompletionMark, "belongs to another header");
    }

    [Fact]
    public void Header_fields_with_absurd_values_are_refused_each_with_its_own_message()
    {
        void Case(Action patch, SnapshotFault fault, string fragment)
        {
            var saved = _file.Read(0, 128);
            patch();
            _file.ResealHeader();
            Refused(fault, fragment);
            _file.Write(0, saved);
        }
        Case(() => _file.SetU32(16, 65536), SnapshotFault.BadHeader, "unsupported page size 65536");
        Case(() => _file.SetU32(12, 256), SnapshotFault.BadHeader, "header length 256");
        Case(() => _file.SetU32(60, 1), SnapshotFault.BadHeader, "unknown header flags");
        Case(() => _file.SetU32(80, 1), SnapshotFault.BadHeader, "reserved header bytes");
        Case(() => _file.SetU32(SnapshotSurgery.BlockCountOffset, 0), SnapshotFault.BlockCount, "block count 0 is absurd");
        Case(() => _file.SetU32(SnapshotSurgery.BlockCountOffset, 100000), SnapshotFault.BlockCount, "block count 100000 is absurd");
        Case(() => _file.SetU64(SnapshotSurgery.TableLengthOffset, 3 * 144), SnapshotFault.BadHeader, "block table length 432 is not 2 x 144");
        Case(() => _file.SetU32(SnapshotSurgery.StateCountOffset, 1_000_000), SnapshotFault.StateLayout, "state section count 1000000 is absurd");
        Case(() => _file.SetU64(SnapshotSurgery.StateLengthOffset, 1UL << 40), SnapshotFault.StateLayout, "state area length 1099511627776 is absurd");
        Case(() => _file.SetU64(SnapshotSurgery.FileLengthOffset, (ulong)_file.Length + 4096), SnapshotFault.Truncated, "truncated");
        Case(() => _file.SetU64(SnapshotSurgery.FileLengthOffset, (ulong)_file.Length - 1), SnapshotFault.TrailingData, "more than its header says");
    }

    [Fact]
    public void Offsets_and_lengths_past_the_end_of_the_file_are_refused()
    {
        var length = (ulong)_file.Length;
        void HeaderCase(int field, ulong value, string fragment)
        {
            var saved = _file.Read(0, 128);
            _file.SetU64(field, value);
            _file.ResealHeader();
            Refused(SnapshotFault.OutOfBounds, fragment);
            _file.Write(0, saved);
        }
        HeaderCase(SnapshotSurgery.TableOffsetOffset, length - 100, "the block table");
        HeaderCase(SnapshotSurgery.TableOffsetOffset, ulong.MaxValue - 10, "runs past the end of the file");
        HeaderCase(SnapshotSurgery.StateOffsetOffset, length - 10, "the state area");

        void EntryCase(int block, int field, ulong value, string fragment)
        {
            var entry = _file.Read(_file.Entry(block), SnapshotSurgery.EntrySize);
            _file.SetU64(_file.EntryField(block, field), value);
            _file.ResealEntry(block);
            Refused(SnapshotFault.OutOfBounds, fragment);
            _file.Write(_file.Entry(block), entry);
        }
        EntryCase(1, SnapshotSurgery.PagesOffsetOffset, SnapshotFormat.AlignUp(length, MiB), "the page area of 'ram-high'");
        EntryCase(1, SnapshotSurgery.PagesOffsetOffset, (ulong.MaxValue >> 20) << 20, "runs past the end of the file");
        EntryCase(0, SnapshotSurgery.PresentBitmapOffset, length - 8, "the present-page bitmap of 'ram-low'");
        EntryCase(0, SnapshotSurgery.BalloonBitmapOffset, ulong.MaxValue, "the balloon bitmap of 'ram-low'");
        EntryCase(1, SnapshotSurgery.PageChecksumsOffsetOffset, length - 100, "the page checksums of 'ram-high'");
    }

    [Fact]
    public void Overlapping_regions_are_refused_naming_both()
    {
        void EntryCase(int block, int field, ulong value, string first, string second)
        {
            var entry = _file.Read(_file.Entry(block), SnapshotSurgery.EntrySize);
            _file.SetU64(_file.EntryField(block, field), value);
            _file.ResealEntry(block);
            var e = Refused(SnapshotFault.Overlap, "overlap");
            Assert.Contains(first, e.Message);
            Assert.Contains(second, e.Message);
            _file.Write(_file.Entry(block), entry);
        }
        // Two page areas on top of each other.
        EntryCase(1, SnapshotSurgery.PagesOffsetOffset, (ulong)_file.PagesOffset(0) + MiB, "the page area of 'ram-low'", "the page area of 'ram-high'");
        // A bitmap inside a page area.
        EntryCase(1, SnapshotSurgery.PresentBitmapOffset, (ulong)_file.PagesOffset(0) + 4096, "the page area of 'ram-low'", "the present-page bitmap of 'ram-high'");
        // A bitmap on the block table.
        EntryCase(0, SnapshotSurgery.BalloonBitmapOffset, (ulong)_file.TableOffset, "the block table", "the balloon bitmap of 'ram-low'");
        // The header.
        EntryCase(0, SnapshotSurgery.PresentBitmapOffset, 64, "the file header", "the present-page bitmap of 'ram-low'");
        // A page checksum area over a bitmap, and inside a page area.
        EntryCase(1, SnapshotSurgery.PageChecksumsOffsetOffset, (ulong)_file.PresentBitmap(0), "the present-page bitmap of 'ram-low'", "the page checksums of 'ram-high'");
        EntryCase(0, SnapshotSurgery.PageChecksumsOffsetOffset, (ulong)_file.PagesOffset(1) + 8, "the page area of 'ram-high'", "the page checksums of 'ram-low'");
        // Both bitmaps of one block in the same place.
        EntryCase(0, SnapshotSurgery.BalloonBitmapOffset, (ulong)_file.PresentBitmap(0), "the present-page bitmap of 'ram-low'", "the balloon bitmap of 'ram-low'");
        // The state area over the last page area.
        var header = _file.Read(0, 128);
        _file.SetU64(SnapshotSurgery.StateOffsetOffset, (ulong)_file.PagesOffset(1));
        _file.ResealHeader();
        var overlap = Refused(SnapshotFault.Overlap, "overlap");
        Assert.Contains("the state area", overlap.Message);
        _file.Write(0, header);
    }

    [Fact]
    public void Any_flipped_block_table_byte_is_a_block_table_checksum_mismatch()
    {
        for (var offset = 0; offset < SnapshotSurgery.EntrySize; offset += 9)
        {
            _file.Flip(_file.Entry(1) + offset);
            Refused(SnapshotFault.BlockEntryChecksum, "block table entry 1: block table checksum mismatch");
            _file.Flip(_file.Entry(1) + offset);
        }
    }

    [Fact]
    public void Block_entries_with_absurd_names_sizes_and_bitmaps_are_refused()
    {
        void Case(int block, Action patch, SnapshotFault fault, string fragment)
        {
            var entry = _file.Read(_file.Entry(block), SnapshotSurgery.EntrySize);
            patch();
            _file.ResealEntry(block);
            Refused(fault, fragment);
            _file.Write(_file.Entry(block), entry);
        }
        var e0 = _file.Entry(0);
        Case(0, () => _file.SetU16(e0, 0), SnapshotFault.BlockEntry, "name length 0 is absurd");
        Case(0, () => _file.SetU16(e0, 65), SnapshotFault.BlockEntry, "name length 65 is absurd");
        Case(0, () => _file.Write(e0 + 4, [0xFF, 0xFE]), SnapshotFault.BlockEntry, "not valid UTF-8");
        Case(0, () => _file.Write(e0 + 4 + 7, [(byte)'x']), SnapshotFault.BlockEntry, "reserved bytes are not zero");
        Case(0, () => _file.SetU16(e0 + 2, 1), SnapshotFault.BlockEntry, "reserved bytes are not zero");
        Case(0, () => _file.Write(e0 + 130, [1]), SnapshotFault.BlockEntry, "reserved bytes are not zero");
        Case(1, () => { _file.SetU16(_file.Entry(1), 7); _file.Write(_file.Entry(1) + 4, "ram-low\0"u8); }, SnapshotFault.BlockEntry, "block 'ram-low' appears twice");
        Case(0, () => _file.SetU64(e0 + SnapshotSurgery.SizeOffset, 0), SnapshotFault.BlockEntry, "size 0 is absurd");
        Case(0, () => _file.SetU64(e0 + SnapshotSurgery.SizeOffset, 16 * MiB + 100), SnapshotFault.BlockEntry, "size 16777316 is absurd");
        Case(0, () => _file.SetU64(e0 + SnapshotSurgery.SizeOffset, 1UL << 50), SnapshotFault.BlockEntry, "is absurd");
        Case(0, () => _file.SetU64(e0 + SnapshotSurgery.BitmapLengthOffset, 1UL << 40), SnapshotFault.BlockEntry, "bitmap length 1099511627776 is not the 512 bytes its 4096 pages need");
        Case(0, () => _file.SetU64(e0 + SnapshotSurgery.PagesOffsetOffset, (ulong)_file.PagesOffset(0) + 4096), SnapshotFault.BlockEntry, "is not 1 MiB aligned");
    }

    [Fact]
    public void Any_flipped_bitmap_byte_is_a_bitmap_checksum_mismatch()
    {
        var present = _file.PresentBitmap(0);
        _file.Flip(present + 3, 0x01);
        Refused(SnapshotFault.BitmapChecksum, "block 'ram-low': present-page bitmap checksum mismatch");
        _file.Flip(present + 3, 0x01);

        var balloon = _file.BalloonBitmap(1);
        _file.Flip(balloon + 64, 0x80);
        Refused(SnapshotFault.BitmapChecksum, "block 'ram-high': balloon bitmap checksum mismatch");
    }

    [Fact]
    public void A_bitmap_claiming_pages_past_its_block_is_refused()
    {
        // ram-high has 515 pages: its bitmap is 9 words, and bits 515..575 of the last word are past the block.
        var present = _file.PresentBitmap(1);
        Assert.Equal(72, _file.BitmapLength(1));
        _file.Flip(present + 64, 0x08); // page 515
        _file.ResealBitmaps(1);
        Refused(SnapshotFault.BitmapPastBlock, "claims page 515, past its block (515 pages)");
        _file.Flip(present + 64, 0x08);

        var balloon = _file.BalloonBitmap(1);
        _file.Flip(balloon + 71, 0x80); // page 575
        _file.ResealBitmaps(1);
        Refused(SnapshotFault.BitmapPastBlock, "the balloon bitmap claims page 575");
    }

    [Fact]
    public void A_page_both_present_and_ballooned_is_refused()
    {
        _file.Flip(_file.BalloonBitmap(0) + 1, 0x01); // page 8: present
        _file.ResealBitmaps(0);
        Refused(SnapshotFault.BitmapConflict, "page 8 is both present and ballooned");
    }

    [Fact]
    public void Any_flipped_state_byte_is_refused_as_bad_state()
    {
        var state = _file.StateOffset;
        var length = _file.StateLength;
        for (var offset = 0L; offset < length; offset += offset < 64 ? 1 : 997)
        {
            _file.Flip(state + offset);
            var e = Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_path));
            Assert.True(e.Fault is SnapshotFault.StateChecksum or SnapshotFault.StateLayout, $"state byte {offset}: {e.Fault}: {e.Message}");
            Assert.Contains("state", e.Message);
            _file.Flip(state + offset);
        }
        // A byte of a blob: exactly a checksum mismatch, naming the section.
        _file.Flip(state + 16 + 4 + 100);
        Refused(SnapshotFault.StateChecksum, "state section 0 (at state offset 0): state checksum mismatch");
    }

    [Fact]
    public void A_state_area_with_sections_that_do_not_fill_it_exactly_is_refused()
    {
        var header = _file.Read(0, 128);
        _file.SetU32(SnapshotSurgery.StateCountOffset, 3);
        _file.ResealHeader();
        Refused(SnapshotFault.StateLayout, "bytes in the state area after its 3 sections");
        _file.Write(0, header);

        _file.SetU32(SnapshotSurgery.StateCountOffset, 5);
        _file.ResealHeader();
        Refused(SnapshotFault.StateLayout, "state section 4");
    }

    [Fact]
    public void A_missing_file_a_directory_and_an_empty_file_are_refused_with_the_same_exception_type()
    {
        Assert.Equal(SnapshotFault.Io, Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_snapshot.Dir.File("nothing-here"))).Fault);
        Assert.Equal(SnapshotFault.Io, Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_snapshot.Dir.Path)).Fault);
        File.WriteAllBytes(_snapshot.Dir.File("empty"), []);
        Assert.Equal(SnapshotFault.Truncated, Assert.Throws<SnapshotFormatException>(() => SnapshotFile.Open(_snapshot.Dir.File("empty"))).Fault);
    }

    [Fact]
    public void Random_damage_to_the_metadata_never_gets_anything_but_a_snapshot_format_exception()
    {
        var random = new Random(6);
        var metadataEnd = (int)_file.PagesOffset(0);
        var original = _file.Read(0, metadataEnd);
        var state = _file.Read(_file.StateOffset, (int)_file.StateLength);
        // Offsets read once: the damage may hit the header fields they come from.
        var table = _file.TableOffset;
        var bitmaps = new[] { _file.PresentBitmap(0), _file.PresentBitmap(1) };
        var stateOffset = _file.StateOffset;
        var refused = 0;
        for (var i = 0; i < 300; i++)
        {
            // Mostly the header and table, sometimes the bitmaps or the state; 1..4 bytes at a time.
            var hits = random.Next(1, 5);
            for (var h = 0; h < hits; h++)
            {
                long at = random.Next(4) switch
                {
                    0 => random.Next(128),
                    1 => table + random.Next(256),
                    2 => bitmaps[random.Next(2)] + random.Next(72),
                    _ => stateOffset + random.Next(state.Length),
                };
                _file.Flip(at, (byte)(1 << random.Next(8)));
            }
            if (random.Next(4) == 0)
                _file.ResealHeader(); // get past the header checksum sometimes
            if (RestoreOrRefuse() is not null)
                refused++;
            _file.Write(0, original);
            _file.Write(stateOffset, state);
        }
        Assert.True(refused > 250, $"only {refused} of 300 damaged files refused");
    }

    [Fact]
    public void Random_damage_anywhere_is_refused_or_restores_exactly_what_was_saved()
    {
        var random = new Random(16);
        var length = _file.Length;
        // Offsets read once: the damage may hit the fields they come from.
        var present = new List<(int Block, ulong Page)>();
        using (var file = SnapshotFile.Open(_path))
        {
            foreach (var block in file.Blocks)
                present.AddRange(Enumerable.Range(0, (int)block.PageCount).Where(p => block.IsPresent((ulong)p)).Select(p => (block.Index, (ulong)p)));
        }
        var slots = present.Select(p => _file.PageSlot(p.Block, p.Page)).ToArray();
        var checksums = present.Select(p => _file.PageChecksum(p.Block, p.Page)).ToArray();
        var metadataEnd = _file.PagesOffset(0);
        var stateOffset = _file.StateOffset;
        long Somewhere() => random.Next(6) switch
        {
            0 or 1 => slots[random.Next(slots.Length)] + random.Next(Page.Size), // a present page
            2 => checksums[random.Next(checksums.Length)] + random.Next(4),      // a present page's checksum
            3 => random.NextInt64(metadataEnd),                                 // header, table, bitmaps, checksum areas
            4 => stateOffset + random.NextInt64(length - stateOffset),
            _ => random.NextInt64(length),                                      // anywhere (mostly holes)
        };
        var undo = new Stack<(long Offset, byte[] Bytes)>();
        void Damage(long offset, byte[] bytes)
        {
            undo.Push((offset, _file.Read(offset, bytes.Length)));
            _file.Write(offset, bytes);
        }
        var outcomes = new Dictionary<string, int>();
        for (var i = 0; i < 300; i++)
        {
            var kind = random.Next(3);
            if (kind == 0)
            {
                // 1..4 bits flipped.
                for (var h = random.Next(1, 5); h > 0; h--)
                {
                    var at = Somewhere();
                    Damage(at, [(byte)(_file.Read(at, 1)[0] ^ (1 << random.Next(8)))]);
                }
            }
            else if (kind == 1)
            {
                var at = Somewhere() / Page.Size * Page.Size;
                Damage(at, new byte[Math.Min(Page.Size, length - at)]); // 4 KiB zeroed
            }
            else
            {
                // Truncated: keep the tail's data (4 KiB pieces that are not zero) to put back.
                var at = random.NextInt64(length);
                for (var part = at / Page.Size * Page.Size; part < length; part += (long)MiB)
                {
                    var bytes = _file.Read(part, (int)Math.Min((long)MiB, length - part));
                    for (var piece = 0; piece < bytes.Length; piece += Page.Size)
                    {
                        var data = bytes.AsSpan(piece, Math.Min(Page.Size, bytes.Length - piece));
                        if (data.ContainsAnyExcept((byte)0))
                            undo.Push((part + piece, data.ToArray()));
                    }
                }
                _file.Truncate(at);
            }
            var fault = RestoreOrRefuse();
            var outcome = $"{(kind == 0 ? "flip" : kind == 1 ? "zero" : "truncate")}: {fault?.ToString() ?? "restored exactly"}";
            outcomes[outcome] = outcomes.GetValueOrDefault(outcome) + 1;
            _file.Truncate(length);
            while (undo.TryPop(out var change))
                _file.Write(change.Offset, change.Bytes);
            Assert.Equal(length, _file.Length);
        }
        var summary = string.Join(", ", outcomes.OrderBy(o => o.Key).Select(o => $"{o.Key} {o.Value}"));
        _output.WriteLine(summary);
        // Damage to a page or its checksum entry is what the page checksums catch: the loads saw them.
        Assert.True(outcomes.Where(o => o.Key.EndsWith(nameof(SnapshotFault.PageChecksum), StringComparison.Ordinal)).Sum(o => o.Value) >= 50, summary);
        Assert.DoesNotContain("truncate: restored exactly", summary, StringComparison.Ordinal);
    }
}
