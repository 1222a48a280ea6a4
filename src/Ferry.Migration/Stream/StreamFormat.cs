using System.Buffers.Binary;
using System.Runtime.CompilerServices;
using System.Text;
using Ferry.Kvm;

namespace Ferry.Migration.Stream;

/// <summary>Record types of docs/migration-stream.md.</summary>
public enum RecordType : ushort
{
    Pages = 1,
    ZeroRun = 2,
    BalloonBitmap = 3,
    State = 4,
    PassEnd = 5,
    End = 6,

    /// <summary>Nothing to load: the source is alive while a channel has nothing to send (capability keepalive).</summary>
    KeepAlive = 7,

    /// <summary>A chunk's memory digest and the pages left out of it, after the last pass (capability verify).</summary>
    Digest = 8,

    /// <summary>Postcopy (16..31, capability postcopy): at the switch, the pages of a block the destination is still owed.</summary>
    OwedPages = 16,

    /// <summary>Postcopy: the switch itself; precopy ends on this channel and the owed pages follow.</summary>
    PostcopyStart = 17,
}

/// <summary>
/// Capability bits of the stream header and the ACCEPT reply (docs/migration-stream.md, version 1). A source offers
/// <see cref="All"/>; a destination accepts the subset it knows and declines unknown bits.
/// </summary>
[Flags]
public enum StreamCapabilities : ulong
{
    None = 0,

    /// <summary>Bit 0: ZERO_RUN records.</summary>
    ZeroRuns = 1 << 0,

    /// <summary>Bit 1: BALLOON_BITMAP records.</summary>
    BalloonBitmap = 1 << 1,

    /// <summary>Bit 2: more than one channel (hello on channels 1..N-1).</summary>
    Multichannel = 1 << 2,

    /// <summary>Bit 3: the destination says PASS_LOADED when every channel has loaded a pass.</summary>
    PassAcks = 1 << 3,

    /// <summary>
    /// Bit 4: both sides say they are alive while they have nothing else to say (a KEEPALIVE record on channel 0,
    /// a KEEPALIVE reply on the return path), so each side can give up on a silent peer within the channel time-out.
    /// </summary>
    KeepAlive = 1 << 4,

    /// <summary>
    /// Bit 5: after the last pass the source sends a DIGEST of every chunk it holds data in, and the destination
    /// compares them with what it loaded before it resumes the guest (migration capability ferry-verify). Offered
    /// only when that capability is on.
    /// </summary>
    Verify = 1 << 5,

    /// <summary>
    /// Bit 16: the source may switch to postcopy (OWED_PAGES and POSTCOPY_START records, the urgent channel). Offered
    /// only with the postcopy-ram capability; accepted only by a destination whose memory can be demand-paged.
    /// </summary>
    Postcopy = 1 << 16,

    /// <summary>
    /// Bit 17: this connection resumes a paused postcopy migration (the header names its session id). Never part of
    /// <see cref="All"/>: only a destination in postcopy-paused accepts it.
    /// </summary>
    PostcopyResume = 1 << 17,

    /// <summary>Every bit this version writes and understands.</summary>
    All = ZeroRuns | BalloonBitmap | Multichannel | PassAcks | KeepAlive | Verify | Postcopy,
}

/// <summary>A RAM block as the stream names it: never a guest-physical address.</summary>
public sealed record BlockDescriptor(string Name, ulong Size);

/// <summary>The stream header: version, offered capabilities, channel count and the RAM block table.</summary>
public sealed record StreamHeader(ulong Capabilities, int Channels, IReadOnlyList<BlockDescriptor> Blocks, ulong SessionId = 0)
{
    public const uint Version = 1;
    public const int MaxBlocks = 16;
    public const int MaxChannels = 64;
    public const int MaxNameBytes = 64;
    public static ReadOnlySpan<byte> Magic => "FERRYMIG"u8;
}

/// <summary>A stream the destination refuses; the message names what was wrong and where.</summary>
public sealed class StreamFormatException : Exception
{
    public StreamFormatException() { }

    public StreamFormatException(string message) : base(message) { }

    public StreamFormatException(string message, Exception inner) : base(message, inner) { }

    /// <summary>The stream simply ended (the peer closed it), rather than carrying something wrong.</summary>
    public bool EndOfStream { get; init; }
}

/// <summary>Sizes and limits shared by the writer and the reader.</summary>
public static class StreamLimits
{
    public const int FrameHeaderSize = 16;
    public const int MaxPagesPerRecord = 256;
    public const int MaxBitmapBytes = 1 << 20;
    public const int MaxStateBlobBytes = 16 << 20;
    public const int MaxStateNameBytes = 64;

    /// <summary>The largest payload any record type may have.</summary>
    public const int MaxPayload = MaxStateBlobBytes + 12 + MaxStateNameBytes;

    /// <summary>A DIGEST record's fixed part: block, run count, chunk, digest.</summary>
    public const int DigestFixedBytes = 12;

    /// <summary>
    /// The most excluded runs a DIGEST record may carry: runs are apart (a gap of at least one page between two),
    /// so a 512-page chunk holds at most 256.
    /// </summary>
    public const int MaxDigestRuns = Page.ChunkPages / 2;
}

/// <summary>
/// Which channel carries which chunk: RAM is cut into 2 MiB chunks numbered across blocks in block-table order, and
/// chunk c always travels on channel c mod N (so a page's newer copy never overtakes its older one). The sender,
/// the verified migration's digests and the destination's checks all use this one rule.
/// </summary>
public static class ChunkChannels
{
    /// <summary>The first chunk of a block whose first chunk has global number <paramref name="chunkBase"/> that travels on <paramref name="channel"/>; the next ones follow every <paramref name="channels"/> chunks.</summary>
    public static long FirstOn(long chunkBase, int channel, int channels) => ((channel - chunkBase) % channels + channels) % channels;

    /// <summary>The channel chunk <paramref name="chunk"/> of a block whose first chunk has global number <paramref name="chunkBase"/> travels on.</summary>
    public static int ChannelOf(long chunkBase, long chunk, int channels) => (int)((chunkBase + chunk) % channels);
}

/// <summary>CRC32C (hardware-accelerated in box) over byte spans.</summary>
public static class Crc32C
{
    public static uint Append(uint crc, ReadOnlySpan<byte> data)
    {
        var c = ~crc;
        while (data.Length >= 8)
        {
            c = System.Numerics.BitOperations.Crc32C(c, BinaryPrimitives.ReadUInt64LittleEndian(data));
            data = data[8..];
        }
        foreach (var b in data)
            c = System.Numerics.BitOperations.Crc32C(c, b);
        return ~c;
    }

    public static uint Compute(ReadOnlySpan<byte> data) => Append(0, data);

    /// <summary>
    /// The CRC32C of each <paramref name="pieceSize"/>-byte piece of <paramref name="data"/> (a snapshot's pages)
    /// into <paramref name="crcs"/>, equal to <see cref="Compute"/> of each piece. Four pieces are computed at once,
    /// interleaved: one chain waits for the CRC instruction's latency (3 cycles per 8 bytes), four independent
    /// ones keep it busy every cycle.
    /// </summary>
    public static void ComputeEach(ReadOnlySpan<byte> data, int pieceSize, Span<uint> crcs)
    {
        if (pieceSize <= 0 || pieceSize % 8 != 0 || data.Length % pieceSize != 0 || crcs.Length < data.Length / pieceSize)
            throw new ArgumentException($"{data.Length} bytes in {pieceSize}-byte pieces into {crcs.Length} checksums");
        var pieces = data.Length / pieceSize;
        var i = 0;
        // Native-endian word reads are the little-endian words Append reads, on the little-endian hosts Ferry runs on.
        for (; BitConverter.IsLittleEndian && i + 4 <= pieces; i += 4)
        {
            ref var p0 = ref Unsafe.AsRef(in data[i * pieceSize]);
            ref var p1 = ref Unsafe.Add(ref p0, pieceSize);
            ref var p2 = ref Unsafe.Add(ref p1, pieceSize);
            ref var p3 = ref Unsafe.Add(ref p2, pieceSize);
            uint a = ~0u, b = ~0u, c = ~0u, d = ~0u;
            for (var at = 0; at < pieceSize; at += 8)
            {
                a = System.Numerics.BitOperations.Crc32C(a, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p0, at)));
                b = System.Numerics.BitOperations.Crc32C(b, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p1, at)));
                c = System.Numerics.BitOperations.Crc32C(c, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p2, at)));
                d = System.Numerics.BitOperations.Crc32C(d, Unsafe.ReadUnaligned<ulong>(ref Unsafe.Add(ref p3, at)));
            }
            crcs[i] = ~a;
            crcs[i + 1] = ~b;
            crcs[i + 2] = ~c;
            crcs[i + 3] = ~d;
        }
        for (; i < pieces; i++)
            crcs[i] = Compute(data.Slice(i * pieceSize, pieceSize));
    }
}

internal static class HeaderCodec
{
    public static byte[] Encode(StreamHeader header)
    {
        using var body = new MemoryStream();
        Span<byte> scratch = stackalloc byte[8];
        body.Write(StreamHeader.Magic);
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, StreamHeader.Version);
        body.Write(scratch[..4]);
        body.Write(scratch[..4]); // length, patched below
        BinaryPrimitives.WriteUInt64LittleEndian(scratch, header.Capabilities);
        body.Write(scratch);
        BinaryPrimitives.WriteUInt64LittleEndian(scratch, header.SessionId);
        body.Write(scratch);
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, (uint)header.Channels);
        body.Write(scratch[..4]);
        BinaryPrimitives.WriteUInt32LittleEndian(scratch, (uint)header.Blocks.Count);
        body.Write(scratch[..4]);
        foreach (var block in header.Blocks)
        {
            var name = Encoding.UTF8.GetBytes(block.Name);
            BinaryPrimitives.WriteUInt16LittleEndian(scratch, (ushort)name.Length);
            body.Write(scratch[..2]);
            body.Write(name);
            BinaryPrimitives.WriteUInt64LittleEndian(scratch, block.Size);
            body.Write(scratch);
        }
        var bytes = new byte[body.Length + 4];
        body.GetBuffer().AsSpan(0, (int)body.Length).CopyTo(bytes);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(12), (uint)bytes.Length);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(bytes.Length - 4), Crc32C.Compute(bytes.AsSpan(0, bytes.Length - 4)));
        return bytes;
    }
}
