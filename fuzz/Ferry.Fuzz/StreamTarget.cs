using System.Buffers.Binary;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;

namespace Ferry.Fuzz;

/// <summary>
/// The migration stream as a destination reads it. Byte 0 picks the mode: bits 1-2 = what is read (0: stream
/// header then records, as channel 0; 1: a channel hello then records, as channel 1..N-1; 2: the return path's
/// replies, as the source reads them); bit 0 = repair checksums and sequence numbers first, so mutations reach the
/// checks behind them; bit 3 = PAGES data lands straight in anonymous RAM blocks (<see cref="RecordReader.Landing"/>,
/// as a precopy destination on anonymous memory loads), else it is applied to memfd RAM blocks. Every accepted RAM
/// record is applied with <see cref="RamLoader"/>, so a record the reader passes (or lands) but that does not fit its
/// block throws (a crash); an accepted DIGEST must name a chunk of its block and exclude no page past it.
/// </summary>
public static class StreamTarget
{
    public const ulong SessionId = 0x1122_3344_5566_7788;
    public const int Channels = 4;

    public static readonly BlockDescriptor[] Blocks = [new("ram-low", 64 * (ulong)Page.Size), new("ram-high", 16 * (ulong)Page.Size)];

    private static RamBlock[]? s_ram;

    private static RamBlock[]? s_anonymousRam;

    private static RamBlock[] Ram => s_ram ??= [RamBlock.Create("ram-low", 0, Blocks[0].Size, 0), RamBlock.Create("ram-high", 1UL << 32, Blocks[1].Size, 1)];

    private static RamBlock[] AnonymousRam => s_anonymousRam ??=
        [RamBlock.Create("ram-low", 0, Blocks[0].Size, 0, RamBackend.Anonymous), RamBlock.Create("ram-high", 1UL << 32, Blocks[1].Size, 1, RamBackend.Anonymous)];

    public static void Run(byte[] input)
    {
        if (input.Length == 0)
            return;
        var mode = input[0];
        var data = input[1..];
        var kind = (mode >> 1) & 3;
        var ram = (mode & 8) != 0 ? AnonymousRam : Ram;
        if ((mode & 1) != 0)
            Repair(data, kind);
        try
        {
            switch (kind)
            {
                case 0:
                {
                    var reader = new RecordReader(new MemoryStream(data, writable: false), Blocks);
                    reader.ReadHeader();
                    ReadRecords(reader, ram);
                    break;
                }
                case 1:
                {
                    var stream = new MemoryStream(data, writable: false);
                    var channel = ChannelHello.Read(stream, SessionId, Channels);
                    if (channel is < 1 or >= Channels)
                        throw new FuzzOracleException($"a hello for channel {channel} was accepted");
                    var reader = new RecordReader(stream, Blocks);
                    reader.AdoptHeader(new StreamHeader((ulong)StreamCapabilities.All, Channels, Blocks, SessionId));
                    ReadRecords(reader, ram);
                    break;
                }
                default:
                {
                    var stream = new MemoryStream(data, writable: false);
                    for (var i = 0; i < 1000 && stream.Position < stream.Length; i++)
                    {
                        var reply = ReturnPath.Read(stream);
                        if (reply.Type == ReplyType.Failed && reply.Message.Length > ReturnPath.MaxMessageBytes)
                            throw new FuzzOracleException("an over-long FAILED reply was accepted");
                    }
                    break;
                }
            }
        }
        catch (StreamFormatException)
        {
        }
    }

    private static void ReadRecords(RecordReader reader, RamBlock[] ram)
    {
        reader.Landing = (block, offset, length) => ram[block].LoadSpan(offset, length);
        for (var i = 0; i < 100_000; i++)
        {
            var record = reader.ReadRecord();
            Check(record);
            RamLoader.Apply(record, ram);
            if (record.Type == RecordType.End)
            {
                try
                {
                    reader.ReadRecord();
                }
                catch (StreamFormatException)
                {
                    return;
                }
                throw new FuzzOracleException("a record after END was accepted");
            }
        }
    }

    private static void Check(in Record record)
    {
        if (record.Type == RecordType.Digest)
        {
            var blockPages = Blocks[record.Block].Size / (ulong)Page.Size;
            var first = (ulong)record.Chunk * Page.ChunkPages;
            if (first >= blockPages || record.PageCount != Math.Min((ulong)Page.ChunkPages, blockPages - first) || record.Data.Length != Page.ChunkPages / 8)
                throw new FuzzOracleException($"a DIGEST for chunk {record.Chunk} ({record.PageCount} pages, {record.Data.Length} bitmap bytes) of a {blockPages}-page block was accepted");
            if (PageSet.FirstPast(record.Data.Span, record.PageCount) >= 0)
                throw new FuzzOracleException($"a DIGEST excluding pages past its chunk's {record.PageCount} was accepted");
            return;
        }
        if (record.Type is not (RecordType.Pages or RecordType.ZeroRun or RecordType.BalloonBitmap))
            return;
        var size = Blocks[record.Block].Size;
        var pages = record.Type == RecordType.BalloonBitmap ? 0 : record.PageCount;
        if (record.PageOffset % (ulong)Page.Size != 0 || record.PageOffset > size || pages > (size - record.PageOffset) / (ulong)Page.Size)
            throw new FuzzOracleException($"{record.Type} record for {pages} pages at 0x{record.PageOffset:X} of a {size}-byte block was accepted");
        // A landed record's data is already in the block (where its checked fields said: RamBlock.LoadSpan refuses
        // anything else, a crash here); one that did not land must carry exactly its pages.
        if (record.Type == RecordType.Pages && (record.Landed ? !record.Data.IsEmpty : (ulong)record.Data.Length != record.PageCount * (ulong)Page.Size))
            throw new FuzzOracleException($"a PAGES record with {record.Data.Length} bytes for {record.PageCount} pages was accepted (landed: {record.Landed})");
    }

    /// <summary>Rewrites every CRC (and record sequence numbers) so the input passes the checksum checks.</summary>
    public static void Repair(Span<byte> data, int kind)
    {
        var position = 0;
        if (kind == 0)
        {
            if (data.Length < 16)
                return;
            var length = BinaryPrimitives.ReadUInt32LittleEndian(data[12..]);
            if (length < 20 || length > data.Length)
                return;
            BinaryPrimitives.WriteUInt32LittleEndian(data[((int)length - 4)..], Crc32C.Compute(data[..((int)length - 4)]));
            position = (int)length;
        }
        else if (kind == 1)
        {
            if (data.Length < ChannelHello.Size)
                return;
            BinaryPrimitives.WriteUInt32LittleEndian(data[20..], Crc32C.Compute(data[..20]));
            position = ChannelHello.Size;
        }
        var frameSize = kind >= 2 ? 12 : StreamLimits.FrameHeaderSize;
        uint sequence = 0;
        while (position + frameSize <= data.Length)
        {
            var frame = data[position..];
            var length = BinaryPrimitives.ReadUInt32LittleEndian(frame[4..]);
            if (length > frame.Length - frameSize)
                return;
            if (kind < 2)
                BinaryPrimitives.WriteUInt32LittleEndian(frame[12..], sequence++);
            var crc = Crc32C.Append(Crc32C.Compute(frame[..8]), frame.Slice(frameSize, (int)length));
            BinaryPrimitives.WriteUInt32LittleEndian(frame[8..], crc);
            position += frameSize + (int)length;
        }
    }
}
