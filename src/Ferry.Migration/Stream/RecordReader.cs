using Ferry.Kvm;
using System.Buffers.Binary;
using System.Text;

namespace Ferry.Migration.Stream;

/// <summary>
/// One validated record. Data points into the reader's buffer: valid until the next read. <see cref="Landed"/>: a
/// PAGES record whose data was received straight into guest memory (<see cref="RecordReader.Landing"/>); its
/// <see cref="Data"/> is empty and there is nothing left to write.
/// </summary>
public readonly record struct Record(
    RecordType Type, int Block, ulong PageOffset, ulong PageCount, ReadOnlyMemory<byte> Data,
    StateKind StateKind = 0, ushort StateIndex = 0, string StateName = "", uint Pass = 0, uint Digest = 0, bool Landed = false)
{
    /// <summary>A DIGEST record's chunk (its first byte is <see cref="PageOffset"/>, its pages <see cref="PageCount"/>; <see cref="Data"/> is the bitmap of excluded pages, bit i = page i of the chunk).</summary>
    public long Chunk => (long)(PageOffset / Page.ChunkSize);
}

/// <summary>
/// Reads and validates one channel of a migration stream against the destination's own RAM blocks. Every field is
/// hostile: a record that is malformed, corrupted, out of range or out of sequence raises
/// <see cref="StreamFormatException"/> naming the fault; nothing is returned that has not been checked.
/// </summary>
public sealed partial class RecordReader(System.IO.Stream input, IReadOnlyList<BlockDescriptor> localBlocks)
{
    /// <summary>
    /// Where the data of a PAGES record for [<paramref name="byteOffset"/>, + <paramref name="length"/>) of local
    /// block <paramref name="block"/> can be received straight into, or an empty span to have it read into the
    /// reader's buffer (and written by the caller).
    /// </summary>
    public delegate Span<byte> PageLanding(int block, ulong byteOffset, int length);

    /// <summary>
    /// Set: PAGES data is received straight into the span it gives (the guest's memory), with no intermediate copy,
    /// once the record's header fields are validated; the checksum is checked over the landed bytes right after,
    /// and a mismatch fails the read as always. So the bytes of a bad record can be in guest memory when the read
    /// fails: only for a load that fails as a whole on any bad record, before the guest can run (a precopy
    /// destination), never for memory a guest is running on (postcopy clears it at the switch).
    /// </summary>
    public PageLanding? Landing { get; set; }

    private byte[] _buffer = new byte[64 * 1024];
    private readonly byte[] _excluded = new byte[Page.ChunkPages / 8]; // a DIGEST record's runs, as a bitmap
    private bool[]?[] _digested = [];                                   // per local block: chunks with a DIGEST already
    private int[] _blockMap = [];
    private uint _expectedSequence;
    private ulong _pages, _zeroPages, _ballooned;
    private bool _ended;

    /// <summary>What the records read so far carried.</summary>
    public StreamTotals Totals => new(_pages, _zeroPages, _ballooned);

    /// <summary>Bytes consumed so far (header, frames and payloads).</summary>
    public long BytesRead { get; private set; }

    /// <summary>Reads the stream header and maps its blocks onto the local ones (same names and sizes).</summary>
    public StreamHeader ReadHeader()
    {
        Span<byte> start = stackalloc byte[16];
        ReadExactly(start, "stream header");
        if (!start[..8].SequenceEqual(StreamHeader.Magic))
            throw new StreamFormatException("not a Ferry migration stream (bad magic)");
        var version = BinaryPrimitives.ReadUInt32LittleEndian(start[8..]);
        if (version != StreamHeader.Version)
            throw new StreamFormatException($"stream version {version} is not supported (this Ferry reads version {StreamHeader.Version})");
        var length = BinaryPrimitives.ReadUInt32LittleEndian(start[12..]);
        var maxLength = 16 + 8 + 8 + 4 + 4 + StreamHeader.MaxBlocks * (2 + StreamHeader.MaxNameBytes + 8) + 4;
        const int minLength = 16 + 24 + 4;
        if (length < minLength || length > maxLength)
            throw new StreamFormatException($"stream header length {length} is outside {minLength}..{maxLength}");
        var header = new byte[length];
        start.CopyTo(header);
        ReadExactly(header.AsSpan(16), "stream header");
        BytesRead += length;
        var crc = BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan((int)length - 4));
        if (crc != Crc32C.Compute(header.AsSpan(0, (int)length - 4)))
            throw new StreamFormatException("stream header checksum mismatch");
        var span = header.AsSpan(16, (int)length - 20);
        var capabilities = BinaryPrimitives.ReadUInt64LittleEndian(span);
        var sessionId = BinaryPrimitives.ReadUInt64LittleEndian(span[8..]);
        var channels = BinaryPrimitives.ReadUInt32LittleEndian(span[16..]);
        var count = BinaryPrimitives.ReadUInt32LittleEndian(span[20..]);
        if (channels is < 1 or > StreamHeader.MaxChannels)
            throw new StreamFormatException($"channel count {channels} is outside 1..{StreamHeader.MaxChannels}");
        if (count is < 1 or > StreamHeader.MaxBlocks)
            throw new StreamFormatException($"RAM block count {count} is outside 1..{StreamHeader.MaxBlocks}");
        span = span[24..];
        var blocks = new List<BlockDescriptor>();
        for (var i = 0; i < count; i++)
        {
            if (span.Length < 2)
                throw new StreamFormatException("stream header ends inside the block table");
            var nameLength = BinaryPrimitives.ReadUInt16LittleEndian(span);
            if (nameLength is 0 or > StreamHeader.MaxNameBytes || span.Length < 2 + nameLength + 8)
                throw new StreamFormatException($"block {i}: name length {nameLength} is bad or runs past the header");
            var name = Encoding.UTF8.GetString(span.Slice(2, nameLength));
            var size = BinaryPrimitives.ReadUInt64LittleEndian(span[(2 + nameLength)..]);
            blocks.Add(new BlockDescriptor(name, size));
            span = span[(2 + nameLength + 8)..];
        }
        if (span.Length != 0)
            throw new StreamFormatException($"{span.Length} unexpected bytes after the block table");
        MapBlocks(blocks);
        return new StreamHeader(capabilities, (int)channels, blocks, sessionId);
    }


    /// <summary>
    /// For the other channels of a multichannel stream: they carry no header of their own, but their records name
    /// blocks by the header's indices, read on channel 0.
    /// </summary>
    public void AdoptHeader(StreamHeader header) => MapBlocks(header.Blocks);

    private void MapBlocks(IReadOnlyList<BlockDescriptor> blocks)
    {
        _blockMap = new int[blocks.Count];
        for (var i = 0; i < blocks.Count; i++)
        {
            var local = localBlocks.Select((b, index) => (b, index)).FirstOrDefault(x => x.b.Name == blocks[i].Name);
            if (local.b is null)
                throw new StreamFormatException($"the stream has RAM block '{blocks[i].Name}', which this machine does not");
            if (local.b.Size != blocks[i].Size)
                throw new StreamFormatException($"RAM block '{blocks[i].Name}' is {blocks[i].Size} bytes in the stream and {local.b.Size} here");
            _blockMap[i] = local.index;
        }
        if (localBlocks.Any(l => blocks.All(b => b.Name != l.Name)))
            throw new StreamFormatException("this machine has RAM blocks the stream does not");
    }

    /// <summary>Names a record in a message; formatted only when a message is made (no allocation per record).</summary>
    private readonly record struct RecordWhere(uint Sequence, RecordType Type, string Detail = "")
    {
        public override string ToString() => $"record {Sequence} ({Type}){Detail}";
    }

    /// <summary>The next record, validated. END is returned once (totals checked); reading past it is an error.</summary>
    public Record ReadRecord()
    {
        if (_ended)
            throw new StreamFormatException("read past END");
        Span<byte> frame = stackalloc byte[StreamLimits.FrameHeaderSize];
        ReadExactly(frame, "record header (the stream ended before END)");
        var type = (RecordType)BinaryPrimitives.ReadUInt16LittleEndian(frame);
        var length = BinaryPrimitives.ReadUInt32LittleEndian(frame[4..]);
        var crc = BinaryPrimitives.ReadUInt32LittleEndian(frame[8..]);
        var sequence = BinaryPrimitives.ReadUInt32LittleEndian(frame[12..]);
        var where = new RecordWhere(sequence, type);
        if (!Enum.IsDefined(type))
            throw new StreamFormatException($"record {sequence}: unknown type {(ushort)type}");
        if (BinaryPrimitives.ReadUInt16LittleEndian(frame[2..]) != 0)
            throw new StreamFormatException($"{where}: flags must be 0");
        if (length > StreamLimits.MaxPayload)
            throw new StreamFormatException($"{where}: payload length {length} is over the {StreamLimits.MaxPayload}-byte limit");
        if (_buffer.Length < length)
            _buffer = new byte[Math.Max(length, (uint)_buffer.Length * 2)];
        var payload = _buffer.AsSpan(0, (int)length);
        var read = 0;
        if (type == RecordType.Pages && Landing is { } landing && length > PagesHeaderSize)
        {
            // The record's own fields first, checked as usual; then its data straight into place.
            ReadExactly(payload[..PagesHeaderSize], where);
            read = PagesHeaderSize;
            Span<byte> into = default;
            int block = 0;
            ulong offset = 0, count = 0;
            try
            {
                (block, offset, count) = DecodePagesHeader(payload, RecordType.Pages, where);
                if (length - PagesHeaderSize == count * (ulong)Page.Size)
                    into = landing(block, offset, (int)length - PagesHeaderSize);
            }
            catch (StreamFormatException)
            {
                // Fields that do not hold: the record is read whole below and refused there, a damaged one as a
                // checksum mismatch, like any other record.
            }
            if (!into.IsEmpty)
            {
                if (into.Length != length - PagesHeaderSize)
                    throw new InvalidOperationException($"{where}: the landing gave {into.Length} bytes for {length - PagesHeaderSize}");
                ReadExactly(into, where);
                BytesRead += StreamLimits.FrameHeaderSize + length;
                if (crc != Crc32C.Append(Crc32C.Append(Crc32C.Compute(frame[..8]), payload[..PagesHeaderSize]), into))
                    throw new StreamFormatException($"{where}: checksum mismatch");
                CheckSequence(sequence, where);
                _pages += count;
                return new Record(RecordType.Pages, block, offset, count, ReadOnlyMemory<byte>.Empty, Landed: true);
            }
        }
        ReadExactly(payload[read..], where);
        BytesRead += StreamLimits.FrameHeaderSize + length;
        if (crc != Crc32C.Append(Crc32C.Compute(frame[..8]), payload))
            throw new StreamFormatException($"{where}: checksum mismatch");
        CheckSequence(sequence, where);
        return Decode(type, payload, where);
    }

    /// <summary>A PAGES or ZERO_RUN record's fixed fields: block (u16), pad (u16), page count (u32), byte offset (u64).</summary>
    private const int PagesHeaderSize = 16;

    private void CheckSequence(uint sequence, RecordWhere where)
    {
        if (sequence != _expectedSequence)
            throw new StreamFormatException($"{where}: sequence {sequence}, expected {_expectedSequence}");
        _expectedSequence++;
    }

    /// <summary>
    /// A PAGES or ZERO_RUN record's fields, checked: a block of the header, 1..256 pages for PAGES (any positive count
    /// for a zero run), page-aligned, inside the block; for PAGES the payload must hold exactly those pages.
    /// </summary>
    private (int Block, ulong Offset, ulong Count) DecodePagesHeader(ReadOnlySpan<byte> p, RecordType type, RecordWhere where)
    {
        var block = Block(BinaryPrimitives.ReadUInt16LittleEndian(p), where);
        var count = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
        var offset = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
        if (count == 0 || (type == RecordType.Pages && count > StreamLimits.MaxPagesPerRecord))
            throw new StreamFormatException($"{where}: page count {count} is outside 1..{(type == RecordType.Pages ? StreamLimits.MaxPagesPerRecord : uint.MaxValue)}");
        CheckRange(block, offset, count, where);
        return (block, offset, count);
    }

    private Record Decode(RecordType type, ReadOnlySpan<byte> p, RecordWhere where)
    {
        switch (type)
        {
            case RecordType.Pages:
            case RecordType.ZeroRun:
            {
                RequireLength(p, PagesHeaderSize, type == RecordType.Pages ? -1 : PagesHeaderSize, where);
                var (block, offset, count) = DecodePagesHeader(p, type, where);
                if (type == RecordType.Pages)
                {
                    if ((ulong)(p.Length - 16) != count * (ulong)Page.Size)
                        throw new StreamFormatException($"{where}: {p.Length - 16} data bytes for {count} pages");
                    _pages += count;
                    return new Record(type, block, offset, count, _buffer.AsMemory(16, p.Length - 16));
                }
                _zeroPages += count;
                return new Record(type, block, offset, count, ReadOnlyMemory<byte>.Empty);
            }
            case RecordType.BalloonBitmap:
            case RecordType.OwedPages:
            {
                RequireLength(p, 16, -1, where);
                var block = Block(BinaryPrimitives.ReadUInt16LittleEndian(p), where);
                var bytes = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
                var first = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
                if (bytes == 0 || bytes % 8 != 0 || bytes > StreamLimits.MaxBitmapBytes || (ulong)(p.Length - 16) != bytes)
                    throw new StreamFormatException($"{where}: bitmap of {bytes} bytes (a multiple of 8 up to {StreamLimits.MaxBitmapBytes}, all present)");
                if (first % 64 != 0)
                    throw new StreamFormatException($"{where}: first page {first} is not a multiple of 64");
                if (first > localBlocks[block].Size >> Page.Shift) // else first * 4096 may wrap into the block
                    throw new StreamFormatException($"{where}: first page {first} is past the end of block '{localBlocks[block].Name}'");
                var bitmap = p[16..];
                var lastSet = LastSetBit(bitmap);
                if (lastSet >= 0)
                    CheckRange(block, first * Page.Size, (ulong)lastSet + 1, where with { Detail = " (the bitmap claims pages past its block)" });
                if (type == RecordType.BalloonBitmap)
                {
                    foreach (var b in bitmap)
                        _ballooned += (ulong)System.Numerics.BitOperations.PopCount(b);
                }
                return new Record(type, block, first * Page.Size, bytes * 8UL, _buffer.AsMemory(16, (int)bytes));
            }
            case RecordType.State:
            {
                RequireLength(p, 12, -1, where);
                var kind = (StateKind)BinaryPrimitives.ReadUInt16LittleEndian(p);
                var index = BinaryPrimitives.ReadUInt16LittleEndian(p[2..]);
                var nameLength = BinaryPrimitives.ReadUInt16LittleEndian(p[4..]);
                var blobLength = BinaryPrimitives.ReadUInt32LittleEndian(p[8..]);
                if (!Enum.IsDefined(kind))
                    throw new StreamFormatException($"{where}: unknown state kind {(ushort)kind}");
                if (nameLength > StreamLimits.MaxStateNameBytes || blobLength > StreamLimits.MaxStateBlobBytes || (ulong)p.Length != 12UL + nameLength + blobLength)
                    throw new StreamFormatException($"{where}: name of {nameLength} and blob of {blobLength} bytes do not fill the {p.Length}-byte payload");
                var name = Encoding.UTF8.GetString(p.Slice(12, nameLength));
                return new Record(type, -1, 0, 0, _buffer.AsMemory(12 + nameLength, (int)blobLength), kind, index, name);
            }
            case RecordType.Digest:
                return DecodeDigest(p, where);
            case RecordType.PostcopyStart:
                return DecodePostcopyStart(p, where);
            case RecordType.KeepAlive:
                RequireLength(p, 0, 0, where);
                return new Record(type, -1, 0, 0, ReadOnlyMemory<byte>.Empty);
            case RecordType.PassEnd:
                RequireLength(p, 8, 8, where);
                return new Record(type, -1, 0, 0, ReadOnlyMemory<byte>.Empty, Pass: BinaryPrimitives.ReadUInt32LittleEndian(p));
            default: // End
            {
                RequireLength(p, 24, 24, where);
                var pages = BinaryPrimitives.ReadUInt64LittleEndian(p);
                var zero = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
                var ballooned = BinaryPrimitives.ReadUInt64LittleEndian(p[16..]);
                if (pages != _pages || zero != _zeroPages || ballooned != _ballooned)
                    throw new StreamFormatException($"{where}: END counts {pages}/{zero}/{ballooned} pages (data/zero/ballooned), the stream carried {_pages}/{_zeroPages}/{_ballooned}");
                _ended = true;
                return new Record(type, -1, 0, 0, ReadOnlyMemory<byte>.Empty);
            }
        }
    }

    /// <summary>A DIGEST record: a chunk of its block, at most one per chunk, excluded runs in order, apart and inside the chunk.</summary>
    private Record DecodeDigest(ReadOnlySpan<byte> p, RecordWhere where)
    {
        RequireLength(p, StreamLimits.DigestFixedBytes, -1, where);
        var block = Block(BinaryPrimitives.ReadUInt16LittleEndian(p), where);
        var runs = BinaryPrimitives.ReadUInt16LittleEndian(p[2..]);
        var chunk = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
        var digest = BinaryPrimitives.ReadUInt32LittleEndian(p[8..]);
        if (runs > StreamLimits.MaxDigestRuns || p.Length != StreamLimits.DigestFixedBytes + runs * 4)
            throw new StreamFormatException($"{where}: {runs} excluded runs (at most {StreamLimits.MaxDigestRuns}, 4 bytes each) do not fill the {p.Length}-byte payload");
        var pageCount = localBlocks[block].Size >> Page.Shift;
        var chunks = Page.ChunksFor(pageCount);
        if (chunk >= chunks)
            throw new StreamFormatException($"{where}: chunk {chunk} is past the {chunks} chunks of block '{localBlocks[block].Name}'");
        if (_digested.Length == 0)
            _digested = new bool[localBlocks.Count][];
        var seen = _digested[block] ??= new bool[chunks];
        if (seen[chunk])
            throw new StreamFormatException($"{where}: a second digest for chunk {chunk} of block '{localBlocks[block].Name}'");
        var chunkPages = (uint)Math.Min((ulong)Page.ChunkPages, pageCount - (ulong)chunk * Page.ChunkPages);
        Array.Clear(_excluded);
        var end = -1L; // the previous run's end; the next run must start past it
        for (var i = 0; i < runs; i++)
        {
            var first = BinaryPrimitives.ReadUInt16LittleEndian(p[(StreamLimits.DigestFixedBytes + i * 4)..]);
            var length = BinaryPrimitives.ReadUInt16LittleEndian(p[(StreamLimits.DigestFixedBytes + i * 4 + 2)..]);
            if (length == 0 || first <= end || first + length > chunkPages)
                throw new StreamFormatException($"{where}: excluded run {i} (pages {first}+{length}) is empty, not after the previous run's end or past the chunk's {chunkPages} pages");
            for (var page = first; page < first + length; page++)
                _excluded[page >> 3] |= (byte)(1 << (page & 7));
            end = first + length;
        }
        seen[chunk] = true;
        return new Record(RecordType.Digest, block, (ulong)chunk * Page.ChunkSize, chunkPages, _excluded, Digest: digest);
    }

    private static void RequireLength(ReadOnlySpan<byte> payload, int min, int exact, RecordWhere where)
    {
        if (payload.Length < min || (exact >= 0 && payload.Length != exact))
            throw new StreamFormatException($"{where}: payload of {payload.Length} bytes, {(exact >= 0 ? $"expected {exact}" : $"at least {min} required")}");
    }

    private int Block(ushort streamIndex, RecordWhere where)
    {
        if (streamIndex >= _blockMap.Length)
            throw new StreamFormatException($"{where}: block index {streamIndex} is outside the {_blockMap.Length} blocks of the header");
        return _blockMap[streamIndex];
    }

    private void CheckRange(int block, ulong byteOffset, ulong pages, RecordWhere where)
    {
        var size = localBlocks[block].Size;
        if (byteOffset % Page.Size != 0)
            throw new StreamFormatException($"{where}: offset 0x{byteOffset:X} is not page-aligned");
        if (byteOffset > size || pages > (size - byteOffset) / Page.Size)
            throw new StreamFormatException($"{where}: {pages} pages at offset 0x{byteOffset:X} run past the end of block '{localBlocks[block].Name}' ({size} bytes)");
    }

    private static long LastSetBit(ReadOnlySpan<byte> bitmap)
    {
        for (var i = bitmap.Length - 1; i >= 0; i--)
        {
            if (bitmap[i] != 0)
                return i * 8L + 7 - System.Numerics.BitOperations.LeadingZeroCount((uint)bitmap[i]) + 24;
        }
        return -1;
    }

    private void ReadExactly(Span<byte> destination, RecordWhere where)
    {
        try
        {
            input.ReadExactly(destination);
        }
        catch (EndOfStreamException)
        {
            throw new StreamFormatException($"stream truncated inside {where}") { EndOfStream = true };
        }
    }

    private void ReadExactly(Span<byte> destination, string what)
    {
        try
        {
            input.ReadExactly(destination);
        }
        catch (EndOfStreamException)
        {
            throw new StreamFormatException($"stream truncated inside {what}") { EndOfStream = true };
        }
    }
}
