using System.Buffers.Binary;
using Ferry.Migration.Stream;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>The migration stream format: round trip, and every kind of damage rejected with a named error.</summary>
public sealed class StreamFormatTests
{
    internal static readonly BlockDescriptor[] Blocks = [new("ram-low", 64UL << 20), new("ram-high", 16UL << 20)];

    internal static byte[] Page(byte seed)
    {
        var page = new byte[4096];
        for (var i = 0; i < page.Length; i++)
            page[i] = (byte)(seed + i * 7);
        return page;
    }

    /// <summary>A small stream with one record of every type.</summary>
    private static byte[] SampleStream()
    {
        using var ms = new MemoryStream();
        var w = new RecordWriter(ms);
        w.WriteHeader(new StreamHeader(Capabilities: 0b111, Channels: 2, Blocks));
        w.WritePages(0, 4096 * 10, [.. Page(1), .. Page(2)]);
        w.WriteZeroRun(1, 0, 100);
        var bitmap = new byte[8];
        bitmap[0] = 0b1010_0001;
        w.WriteBalloonBitmap(0, 128, bitmap);
        w.WriteState(StateKind.Vcpu, 1, "vcpu", [1, 2, 3, 4, 5]);
        w.WritePassEnd(0);
        w.WriteEnd();
        return ms.ToArray();
    }

    /// <summary>
    /// Every record up to END (data copied out), against <paramref name="blocks"/> (default: this class's two blocks),
    /// PAGES data landing where <paramref name="landing"/> says (none: in the records).
    /// </summary>
    internal static List<Record> ReadAll(byte[] stream, out StreamHeader header, IReadOnlyList<BlockDescriptor>? blocks = null, RecordReader.PageLanding? landing = null)
    {
        var reader = new RecordReader(new MemoryStream(stream), blocks ?? Blocks) { Landing = landing };
        header = reader.ReadHeader();
        var records = new List<Record>();
        while (true)
        {
            var r = reader.ReadRecord();
            records.Add(r with { Data = r.Data.ToArray() });
            if (r.Type == RecordType.End)
                return records;
        }
    }

    [Fact]
    public void A_stream_round_trips()
    {
        var records = ReadAll(SampleStream(), out var header);
        Assert.Equal(2, header.Channels);
        Assert.Equal(0b111UL, header.Capabilities);
        Assert.Equal(["ram-low", "ram-high"], header.Blocks.Select(b => b.Name));
        Assert.Equal([RecordType.Pages, RecordType.ZeroRun, RecordType.BalloonBitmap, RecordType.State, RecordType.PassEnd, RecordType.End], records.Select(r => r.Type));
        Assert.Equal(40960UL, records[0].PageOffset);
        Assert.Equal(2UL, records[0].PageCount);
        Assert.Equal(Page(2), records[0].Data.ToArray()[4096..]);
        Assert.Equal((1, 100UL), (records[1].Block, records[1].PageCount));
        Assert.Equal(128UL * 4096, records[2].PageOffset);
        Assert.Equal((StateKind.Vcpu, (ushort)1, "vcpu"), (records[3].StateKind, records[3].StateIndex, records[3].StateName));
        Assert.Equal([1, 2, 3, 4, 5], records[3].Data.ToArray());
    }

    [Fact]
    public void Blocks_are_matched_by_name_not_position()
    {
        var reader = new RecordReader(new MemoryStream(SampleStream()), [Blocks[1], Blocks[0]]);
        reader.ReadHeader();
        Assert.Equal(1, reader.ReadRecord().Block); // stream block 0 (ram-low) is local block 1
    }

    [Fact]
    public void Every_truncation_is_rejected_with_a_format_error()
    {
        var stream = SampleStream();
        for (var length = 0; length < stream.Length; length++)
        {
            var e = Assert.Throws<StreamFormatException>(() => ReadAll(stream[..length], out _));
            Assert.Contains("truncated", e.Message, StringComparison.Ordinal);
        }
    }

    [Fact]
    public void Every_single_byte_corruption_is_rejected()
    {
        var stream = SampleStream();
        for (var i = 0; i < stream.Length; i++)
        {
            var damaged = (byte[])stream.Clone();
            damaged[i] ^= 0x40;
            // Never anything but a format error: no crash, no silently loaded damage.
            Assert.Throws<StreamFormatException>(() => ReadAll(damaged, out _));
        }
    }

    [Theory]
    [InlineData("ram-low", 32UL << 20, "is 67108864 bytes in the stream")]
    [InlineData("ram-other", 64UL << 20, "which this machine does not")]
    public void Block_tables_that_do_not_match_this_machine_are_refused(string name, ulong size, string expected)
    {
        var reader = new RecordReader(new MemoryStream(SampleStream()), [new BlockDescriptor(name, size), Blocks[1]]);
        var e = Assert.Throws<StreamFormatException>(() => reader.ReadHeader());
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    /// <summary>Writes one hand-made record with a valid checksum, after a valid header.</summary>
    private static byte[] WithRecord(RecordType type, byte[] payload, uint sequence = 0)
    {
        using var ms = new MemoryStream();
        new RecordWriter(ms).WriteHeader(new StreamHeader(0, 1, Blocks));
        WriteFrame(ms, type, payload, sequence);
        return ms.ToArray();
    }

    /// <summary>One hand-made record: frame header with a valid checksum and the given sequence number, then the payload.</summary>
    internal static void WriteFrame(System.IO.Stream output, RecordType type, byte[] payload, uint sequence)
    {
        var frame = new byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(frame, (ushort)type);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), (uint)payload.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(8), Crc32C.Append(Crc32C.Compute(frame.AsSpan(0, 8)), payload));
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(12), sequence);
        output.Write(frame);
        output.Write(payload);
    }

    internal static byte[] RangePayload(ushort block, uint count, ulong offset, int dataBytes = 0)
    {
        var p = new byte[16 + dataBytes];
        BinaryPrimitives.WriteUInt16LittleEndian(p, block);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), count);
        BinaryPrimitives.WriteUInt64LittleEndian(p.AsSpan(8), offset);
        return p;
    }

    [Theory]
    [InlineData("past-end", "run past the end of block 'ram-high'")]
    [InlineData("overflow", "run past the end")]
    [InlineData("unaligned", "not page-aligned")]
    [InlineData("bad-block", "block index 7")]
    [InlineData("too-many-pages", "outside 1..256")]
    [InlineData("short-data", "data bytes for 2 pages")]
    [InlineData("bitmap-past-block", "claims pages past its block")]
    [InlineData("bitmap-first-wraps", "first page 4503599627370496 is past the end of block 'ram-low'")]
    [InlineData("unknown-type", "unknown type 99")]
    [InlineData("sequence", "expected 0")]
    [InlineData("end-totals", "END counts")]
    public void Semantic_faults_are_named(string fault, string expected)
    {
        var stream = fault switch
        {
            "past-end" => WithRecord(RecordType.ZeroRun, RangePayload(1, 2, (16UL << 20) - 4096)),
            "overflow" => WithRecord(RecordType.ZeroRun, RangePayload(0, uint.MaxValue, ulong.MaxValue - 4095)),
            "unaligned" => WithRecord(RecordType.ZeroRun, RangePayload(0, 1, 100)),
            "bad-block" => WithRecord(RecordType.ZeroRun, RangePayload(7, 1, 0)),
            "too-many-pages" => WithRecord(RecordType.Pages, RangePayload(0, 257, 0, 257 * 4096)),
            "short-data" => WithRecord(RecordType.Pages, RangePayload(0, 2, 0, 4096)),
            "bitmap-past-block" => WithRecord(RecordType.BalloonBitmap, [.. RangePayload(1, 8, (16UL << 20) / 4096), .. new byte[] { 1, 0, 0, 0, 0, 0, 0, 0 }]),
            // Fuzzing review: first * 4096 wrapped to 0, so page 2^52 was applied to page 0.
            "bitmap-first-wraps" => WithRecord(RecordType.BalloonBitmap, [.. RangePayload(0, 8, 1UL << 52), .. new byte[] { 1, 0, 0, 0, 0, 0, 0, 0 }]),
            "unknown-type" => WithRecord((RecordType)99, []),
            "sequence" => WithRecord(RecordType.PassEnd, new byte[8], sequence: 5),
            _ => WithRecord(RecordType.End, [1, 0, 0, 0, 0, 0, 0, 0, .. new byte[16]]),
        };
        var e = Assert.Throws<StreamFormatException>(() => ReadAll(stream, out _));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Crc32C_matches_the_standard_check_value()
    {
        Assert.Equal(0xE3069283u, Crc32C.Compute("123456789"u8));
        Assert.Equal(Crc32C.Compute("123456789"u8), Crc32C.Append(Crc32C.Compute("1234"u8), "56789"u8));
    }

    [Fact]
    public void Return_path_replies_round_trip_and_a_pass_loaded_reply_of_the_wrong_length_is_refused()
    {
        var stream = new MemoryStream();
        ReturnPath.WriteAccept(stream, 0b1111);
        ReturnPath.WritePassLoaded(stream, 7);
        ReturnPath.WriteResumed(stream);
        ReturnPath.WriteFailed(stream, "no room");
        stream.Position = 0;
        Assert.Equal(new Reply(ReplyType.Accept, 0b1111, ""), ReturnPath.Read(stream));
        Assert.Equal(new Reply(ReplyType.PassLoaded, 7, ""), ReturnPath.Read(stream));
        Assert.Equal(ReplyType.Resumed, ReturnPath.Read(stream).Type);
        Assert.Equal("no room", ReturnPath.Read(stream).Message);

        // A PASS_LOADED frame claiming an 8-byte payload (checksum valid): refused by its length, not read as a pass.
        var frame = new byte[12 + 8];
        BinaryPrimitives.WriteUInt16LittleEndian(frame, (ushort)ReplyType.PassLoaded);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), 8);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(8), Crc32C.Append(Crc32C.Compute(frame.AsSpan(0, 8)), frame.AsSpan(12)));
        var error = Assert.Throws<StreamFormatException>(() => ReturnPath.Read(new MemoryStream(frame)));
        Assert.Contains("PassLoaded reply has a bad length 8", error.Message);
    }
}
