using System.Buffers.Binary;
using Ferry.Migration.Stream;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>
/// PAGES data received straight into guest memory (<see cref="RecordReader.Landing"/>): the same records, the same
/// refusals with the same names, and data lands only where a record's checked fields say.
/// </summary>
public sealed class RecordLandingTests
{
    private static readonly BlockDescriptor[] Blocks = StreamFormatTests.Blocks;

    /// <summary>Guest memory stand-in: one array per block, and a count of the bytes handed out.</summary>
    private sealed class Memory
    {
        public byte[][] Blocks { get; } = [new byte[64 << 20], new byte[16 << 20]];

        public long Landings;

        public bool Refuse { get; init; }

        public Span<byte> Land(int block, ulong offset, int length)
        {
            if (Refuse)
                return default;
            Landings++;
            return Blocks[block].AsSpan((int)offset, length);
        }

        public bool Untouched => Blocks.All(b => !b.AsSpan().ContainsAnyExcept((byte)0));
    }

    private static byte[] Page(byte seed) => StreamFormatTests.Page(seed);

    private static byte[] Stream()
    {
        using var ms = new MemoryStream();
        var w = new RecordWriter(ms);
        w.WriteHeader(new StreamHeader(0, 1, Blocks));
        w.WritePages(0, 4096 * 10, [.. Page(1), .. Page(2)]);
        w.WriteZeroRun(1, 0, 100);
        w.WritePages(1, 4096 * 3, Page(3));
        w.WriteState(StateKind.Vcpu, 0, "vcpu", [1, 2, 3]);
        w.WriteEnd();
        return ms.ToArray();
    }

    private static List<Record> ReadAll(byte[] stream, Memory memory) => StreamFormatTests.ReadAll(stream, out _, landing: memory.Land);

    [Fact]
    public void Pages_land_in_place_and_every_other_record_reads_as_before()
    {
        var memory = new Memory();
        var records = ReadAll(Stream(), memory);

        Assert.Equal([RecordType.Pages, RecordType.ZeroRun, RecordType.Pages, RecordType.State, RecordType.End], records.Select(r => r.Type));
        Assert.True(records[0].Landed && records[2].Landed);
        Assert.True(records[0].Data.IsEmpty && records[2].Data.IsEmpty);
        Assert.Equal((0, 40960UL, 2UL), (records[0].Block, records[0].PageOffset, records[0].PageCount));
        Assert.Equal([.. Page(1), .. Page(2)], memory.Blocks[0].AsSpan(40960, 8192).ToArray());
        Assert.Equal(Page(3), memory.Blocks[1].AsSpan(4096 * 3, 4096).ToArray());
        Assert.False(records[1].Landed);
        Assert.Equal([1, 2, 3], records[3].Data.ToArray());
        Assert.Equal(2, memory.Landings);
    }

    [Fact]
    public void A_block_that_gives_no_span_gets_the_data_in_the_record_as_before()
    {
        var memory = new Memory { Refuse = true };
        var records = ReadAll(Stream(), memory);

        Assert.False(records[0].Landed);
        Assert.Equal([.. Page(1), .. Page(2)], records[0].Data.ToArray());
        Assert.True(memory.Untouched);
    }

    [Fact]
    public void Every_single_byte_corruption_is_still_refused_as_a_format_error()
    {
        var stream = Stream();
        var memory = new Memory();
        for (var i = 0; i < stream.Length; i++)
        {
            var damaged = (byte[])stream.Clone();
            damaged[i] ^= 0x40;
            Assert.Throws<StreamFormatException>(() => ReadAll(damaged, memory));
        }
    }

    [Fact]
    public void Damage_in_a_records_fields_is_named_a_checksum_mismatch_and_lands_nothing()
    {
        var stream = Stream();
        // The first PAGES record's block index (header, then its 16-byte frame, then the field).
        var at = StreamHeaderLength(stream) + 16;
        var damaged = (byte[])stream.Clone();
        damaged[at] = 9;
        var memory = new Memory();

        var e = Assert.Throws<StreamFormatException>(() => ReadAll(damaged, memory));
        Assert.Contains("record 0 (Pages): checksum mismatch", e.Message, StringComparison.Ordinal);
        Assert.True(memory.Untouched);
        Assert.Equal(0, memory.Landings);
    }

    [Fact]
    public void Damaged_data_is_refused_after_it_landed()
    {
        var stream = Stream();
        var damaged = (byte[])stream.Clone();
        damaged[StreamHeaderLength(stream) + 16 + 16 + 100] ^= 1; // a byte of page 10's data
        var memory = new Memory();

        var e = Assert.Throws<StreamFormatException>(() => ReadAll(damaged, memory));
        Assert.Contains("record 0 (Pages): checksum mismatch", e.Message, StringComparison.Ordinal);
        Assert.Equal(1, memory.Landings); // there, but the read failed: the load that asked for it fails as a whole
    }

    [Theory]
    [InlineData("too-many-pages", "outside 1..256")]
    [InlineData("short-data", "data bytes for 2 pages")]
    [InlineData("past-end", "run past the end of block 'ram-high'")]
    [InlineData("bad-block", "block index 7")]
    [InlineData("sequence", "sequence 5, expected 0")]
    public void Records_whose_fields_do_not_hold_are_refused_by_name_and_land_nothing_out_of_place(string fault, string expected)
    {
        var payload = fault switch
        {
            "too-many-pages" => PagesPayload(0, 257, 0, 257),
            "short-data" => PagesPayload(0, 2, 0, 1),
            "past-end" => PagesPayload(1, 2, (16UL << 20) - 4096, 2),
            "bad-block" => PagesPayload(7, 1, 0, 1),
            _ => PagesPayload(0, 1, 0, 1),
        };
        using var ms = new MemoryStream();
        new RecordWriter(ms).WriteHeader(new StreamHeader(0, 1, Blocks));
        StreamFormatTests.WriteFrame(ms, RecordType.Pages, payload, fault == "sequence" ? 5u : 0u);
        var memory = new Memory();

        var e = Assert.Throws<StreamFormatException>(() => ReadAll(ms.ToArray(), memory));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
        // Only a record whose fields all hold lands (here: the one out of sequence, at its own page 0).
        Assert.Equal(fault == "sequence" ? 1 : 0, memory.Landings);
    }

    [Fact]
    public void A_stream_cut_inside_landed_data_is_truncated()
    {
        var stream = Stream();
        var cut = stream[..(StreamHeaderLength(stream) + 16 + 16 + 5000)];
        var e = Assert.Throws<StreamFormatException>(() => ReadAll(cut, new Memory()));
        Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
    }

    private static int StreamHeaderLength(byte[] stream) => (int)BinaryPrimitives.ReadUInt32LittleEndian(stream.AsSpan(12));

    private static byte[] PagesPayload(ushort block, uint count, ulong offset, int dataPages) => StreamFormatTests.RangePayload(block, count, offset, dataPages * 4096);
}
