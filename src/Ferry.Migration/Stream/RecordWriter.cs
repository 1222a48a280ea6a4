using Ferry.Kvm;
using System.Buffers.Binary;
using System.Text;

namespace Ferry.Migration.Stream;

/// <summary>Counts of what a stream carried; END repeats them so the destination can cross-check.</summary>
public readonly record struct StreamTotals(ulong Pages, ulong ZeroPages, ulong BalloonedPages);

/// <summary>Writes one channel of a migration stream (docs/migration-stream.md). Not thread-safe: one writer per channel.</summary>
public sealed partial class RecordWriter(System.IO.Stream output)
{
    private readonly byte[] _frame = new byte[StreamLimits.FrameHeaderSize + 32];

    // Pages of a running guest change under the sender: the checksum and the bytes sent must come from one copy.
    private readonly byte[] _pageCopy = new byte[StreamLimits.MaxPagesPerRecord * Page.Size];
    private uint _sequence;
    private ulong _pages, _zeroPages, _ballooned;

    public StreamTotals Totals => new(_pages, _zeroPages, _ballooned);

    /// <summary>Bytes handed to the output so far (frames, payloads and the header): the migration's "transferred".</summary>
    public long BytesWritten { get; private set; }

    public void WriteHeader(StreamHeader header)
    {
        var bytes = HeaderCodec.Encode(header);
        output.Write(bytes);
        BytesWritten += bytes.Length;
    }

    public void Flush() => output.Flush();

    public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages)
    {
        if (pages.Length == 0 || pages.Length % Page.Size != 0 || pages.Length > StreamLimits.MaxPagesPerRecord * Page.Size)
            throw new ArgumentException($"a PAGES record carries 1..{StreamLimits.MaxPagesPerRecord} whole pages, not {pages.Length} bytes", nameof(pages));
        var count = (uint)(pages.Length / Page.Size);
        Span<byte> fixedPart = stackalloc byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart, block);
        BinaryPrimitives.WriteUInt32LittleEndian(fixedPart[4..], count);
        BinaryPrimitives.WriteUInt64LittleEndian(fixedPart[8..], pageOffset);
        var copy = _pageCopy.AsSpan(0, pages.Length);
        pages.CopyTo(copy);
        Write(RecordType.Pages, fixedPart, copy);
        _pages += count;
    }

    public void WriteZeroRun(ushort block, ulong pageOffset, uint count)
    {
        Span<byte> payload = stackalloc byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(payload, block);
        BinaryPrimitives.WriteUInt32LittleEndian(payload[4..], count);
        BinaryPrimitives.WriteUInt64LittleEndian(payload[8..], pageOffset);
        Write(RecordType.ZeroRun, payload, []);
        _zeroPages += count;
    }

    public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        WriteBitmap(RecordType.BalloonBitmap, block, firstPage, bitmap);
        foreach (var b in bitmap)
            _ballooned += (ulong)System.Numerics.BitOperations.PopCount(b);
    }

    /// <summary>A page bitmap record (BALLOON_BITMAP, OWED_PAGES): block, byte count, first page, bits.</summary>
    private void WriteBitmap(RecordType type, ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        Span<byte> fixedPart = stackalloc byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart, block);
        BinaryPrimitives.WriteUInt32LittleEndian(fixedPart[4..], (uint)bitmap.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(fixedPart[8..], firstPage);
        Write(type, fixedPart, bitmap);
    }

    public void WriteState(StateKind kind, ushort index, string name, ReadOnlySpan<byte> blob)
    {
        var nameBytes = Encoding.UTF8.GetBytes(name);
        var fixedPart = new byte[12 + nameBytes.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart, (ushort)kind);
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart.AsSpan(2), index);
        BinaryPrimitives.WriteUInt16LittleEndian(fixedPart.AsSpan(4), (ushort)nameBytes.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(fixedPart.AsSpan(8), (uint)blob.Length);
        nameBytes.CopyTo(fixedPart, 12);
        Write(RecordType.State, fixedPart, blob);
    }

    public void WritePassEnd(uint pass)
    {
        Span<byte> payload = stackalloc byte[8];
        BinaryPrimitives.WriteUInt32LittleEndian(payload, pass);
        Write(RecordType.PassEnd, payload, []);
    }

    /// <summary>
    /// A chunk's digest (capability verify): <paramref name="excluded"/> is the chunk's bitmap of pages left out of
    /// the comparison (bit i = page i of the chunk), sent as runs.
    /// </summary>
    public void WriteDigest(ushort block, uint chunk, uint digest, ReadOnlySpan<byte> excluded)
    {
        if (excluded.Length > Page.ChunkPages / 8)
            throw new ArgumentException($"an excluded-page bitmap of {excluded.Length} bytes is larger than a chunk", nameof(excluded));
        Span<byte> payload = stackalloc byte[StreamLimits.DigestFixedBytes + StreamLimits.MaxDigestRuns * 4];
        var runs = 0;
        foreach (var run in PageSet.RunsIn(excluded, 0))
        {
            // Runs of a bitmap are maximal, so two are always apart and a chunk has at most MaxDigestRuns.
            var at = StreamLimits.DigestFixedBytes + runs * 4;
            BinaryPrimitives.WriteUInt16LittleEndian(payload[at..], (ushort)run.Start);
            BinaryPrimitives.WriteUInt16LittleEndian(payload[(at + 2)..], (ushort)run.Length);
            runs++;
        }
        BinaryPrimitives.WriteUInt16LittleEndian(payload, block);
        BinaryPrimitives.WriteUInt16LittleEndian(payload[2..], (ushort)runs);
        BinaryPrimitives.WriteUInt32LittleEndian(payload[4..], chunk);
        BinaryPrimitives.WriteUInt32LittleEndian(payload[8..], digest);
        Write(RecordType.Digest, payload[..(StreamLimits.DigestFixedBytes + runs * 4)], []);
    }

    /// <summary>A record with nothing to load (capability keepalive): tells the destination the source is alive.</summary>
    public void WriteKeepAlive() => Write(RecordType.KeepAlive, [], []);

    /// <summary>Ends the stream with the totals of everything written through this writer.</summary>
    public void WriteEnd()
    {
        Span<byte> payload = stackalloc byte[24];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, _pages);
        BinaryPrimitives.WriteUInt64LittleEndian(payload[8..], _zeroPages);
        BinaryPrimitives.WriteUInt64LittleEndian(payload[16..], _ballooned);
        Write(RecordType.End, payload, []);
        output.Flush();
    }

    private void Write(RecordType type, ReadOnlySpan<byte> fixedPart, ReadOnlySpan<byte> data)
    {
        var frame = _frame.AsSpan(0, StreamLimits.FrameHeaderSize);
        BinaryPrimitives.WriteUInt16LittleEndian(frame, (ushort)type);
        BinaryPrimitives.WriteUInt16LittleEndian(frame[2..], 0);
        BinaryPrimitives.WriteUInt32LittleEndian(frame[4..], (uint)(fixedPart.Length + data.Length));
        var crc = Crc32C.Append(Crc32C.Append(Crc32C.Compute(frame[..8]), fixedPart), data);
        BinaryPrimitives.WriteUInt32LittleEndian(frame[8..], crc);
        BinaryPrimitives.WriteUInt32LittleEndian(frame[12..], _sequence++);
        output.Write(frame);
        output.Write(fixedPart);
        output.Write(data);
        BytesWritten += frame.Length + fixedPart.Length + data.Length;
    }
}

public enum StateKind : ushort
{
    Vcpu = 1,
    Device = 2,
    Machine = 3,
}
