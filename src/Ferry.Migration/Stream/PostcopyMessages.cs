using System.Buffers.Binary;
using Ferry.Kvm;

namespace Ferry.Migration.Stream;

/// <summary>A PAGE_REQUEST: pages [<paramref name="FirstPage"/>, +<paramref name="Count"/>) of block <paramref name="Block"/> (header order).</summary>
public readonly record struct PageRequest(int Block, ulong FirstPage, uint Count);

/// <summary>Part of a NEEDED_PAGES bitmap: bit i = page <paramref name="FirstPage"/>+i of <paramref name="Block"/> is still needed.</summary>
public readonly record struct NeededPages(int Block, ulong FirstPage, byte[] Bitmap);

/// <summary>
/// POSTCOPY_DONE's figures, measured on the destination: faults on owed pages, the requests they caused, pages that
/// arrived twice (dropped), the time every vCPU was blocked at once, fault-to-placement latency percentiles, and
/// each vCPU's blocked time (at most <see cref="PostcopyMessages.MaxVcpus"/>). Times in nanoseconds.
/// </summary>
public sealed record PostcopyDoneMessage(
    ulong Faults, ulong Requests, ulong DuplicatePages, ulong BlocktimeNs, ulong LatencyP50Ns, ulong LatencyP99Ns, ulong LatencyMaxNs,
    IReadOnlyList<ulong> VcpuBlocktimeNs);

/// <summary>
/// The postcopy messages of the urgent channel's return direction (docs/migration-stream.md, Postcopy), in the
/// return path's framing (<see cref="ReturnPath"/>): the destination asks for pages there and the source answers on
/// the same connection's other direction, so a request and its answer never queue behind bulk pages. Each payload is
/// checked here as hostile input against the stream's block table.
/// </summary>
public static class PostcopyMessages
{
    /// <summary>The most vCPUs POSTCOPY_DONE names one by one (a message is at most 1 KiB).</summary>
    public const int MaxVcpus = 64;

    /// <summary>Bitmap bytes per NEEDED_PAGES message (a multiple of 8 that fits the 1 KiB limit with its 16-byte head).</summary>
    public const int NeededBitmapBytes = 1000 / 8 * 8;

    public static void WriteRequest(System.IO.Stream output, PageRequest request)
    {
        Span<byte> payload = stackalloc byte[16];
        BinaryPrimitives.WriteUInt16LittleEndian(payload, (ushort)request.Block);
        BinaryPrimitives.WriteUInt32LittleEndian(payload[4..], request.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(payload[8..], request.FirstPage);
        ReturnPath.Write(output, ReplyType.PageRequest, payload);
    }

    public static void WriteRunning(System.IO.Stream output) => ReturnPath.Write(output, ReplyType.PostcopyRunning, []);

    /// <summary>Writes a block's needed set as NEEDED_PAGES messages (only the parts with a bit set).</summary>
    public static void WriteNeeded(System.IO.Stream output, int block, PageSet needed)
    {
        var bytes = needed.Bytes;
        Span<byte> payload = stackalloc byte[16 + NeededBitmapBytes];
        for (var at = 0; at < bytes.Length; at += NeededBitmapBytes)
        {
            var part = bytes.Slice(at, Math.Min(NeededBitmapBytes, bytes.Length - at));
            if (!part.ContainsAnyExcept((byte)0))
                continue;
            BinaryPrimitives.WriteUInt16LittleEndian(payload, (ushort)block);
            BinaryPrimitives.WriteUInt16LittleEndian(payload[2..], 0);
            BinaryPrimitives.WriteUInt32LittleEndian(payload[4..], (uint)part.Length);
            BinaryPrimitives.WriteUInt64LittleEndian(payload[8..], (ulong)at * 8);
            part.CopyTo(payload[16..]);
            ReturnPath.Write(output, ReplyType.NeededPages, payload[..(16 + part.Length)]);
        }
    }

    public static void WriteNeededEnd(System.IO.Stream output, ulong pages)
    {
        Span<byte> payload = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, pages);
        ReturnPath.Write(output, ReplyType.NeededEnd, payload);
    }

    public static void WriteDone(System.IO.Stream output, PostcopyDoneMessage done)
    {
        var vcpus = Math.Min(done.VcpuBlocktimeNs.Count, MaxVcpus);
        var payload = new byte[64 + vcpus * 8];
        ulong[] fixedPart = [done.Faults, done.Requests, done.DuplicatePages, done.BlocktimeNs, done.LatencyP50Ns, done.LatencyP99Ns, done.LatencyMaxNs];
        for (var i = 0; i < fixedPart.Length; i++)
            BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(i * 8), fixedPart[i]);
        BinaryPrimitives.WriteUInt32LittleEndian(payload.AsSpan(56), (uint)vcpus);
        for (var i = 0; i < vcpus; i++)
            BinaryPrimitives.WriteUInt64LittleEndian(payload.AsSpan(64 + i * 8), done.VcpuBlocktimeNs[i]);
        ReturnPath.Write(output, ReplyType.PostcopyDone, payload);
    }

    /// <summary>A PAGE_REQUEST's pages, checked against the block table (index, alignment, range; 1..256 pages).</summary>
    public static PageRequest ReadRequest(in Reply reply, IReadOnlyList<BlockDescriptor> blocks)
    {
        var p = Payload(reply, ReplyType.PageRequest, 16, 16);
        var block = BinaryPrimitives.ReadUInt16LittleEndian(p);
        var count = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
        var first = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
        if (BinaryPrimitives.ReadUInt16LittleEndian(p[2..]) != 0)
            throw new StreamFormatException("the destination's PAGE_REQUEST has a non-zero reserved field");
        if (block >= blocks.Count)
            throw new StreamFormatException($"the destination requested pages of block {block}, outside the {blocks.Count} blocks of the stream");
        if (count is 0 or > StreamLimits.MaxPagesPerRecord)
            throw new StreamFormatException($"the destination requested {count} pages at once (1..{StreamLimits.MaxPagesPerRecord})");
        var pages = blocks[block].Size >> Page.Shift;
        if (first >= pages || count > pages - first)
            throw new StreamFormatException($"the destination requested page {first} (+{count}) of block '{blocks[block].Name}', which has {pages} pages");
        return new PageRequest(block, first, count);
    }

    /// <summary>A NEEDED_PAGES part, checked like a balloon bitmap (block, multiple-of-64 start, no bit past the block).</summary>
    public static NeededPages ReadNeeded(in Reply reply, IReadOnlyList<BlockDescriptor> blocks)
    {
        var p = Payload(reply, ReplyType.NeededPages, 24, ReturnPath.MaxMessageBytes);
        var block = BinaryPrimitives.ReadUInt16LittleEndian(p);
        var bytes = BinaryPrimitives.ReadUInt32LittleEndian(p[4..]);
        var first = BinaryPrimitives.ReadUInt64LittleEndian(p[8..]);
        if (block >= blocks.Count)
            throw new StreamFormatException($"the destination's needed bitmap names block {block}, outside the {blocks.Count} blocks of the stream");
        if (bytes == 0 || bytes % 8 != 0 || bytes != p.Length - 16)
            throw new StreamFormatException($"the destination's needed bitmap has {bytes} bytes in a {p.Length}-byte message (a multiple of 8, all present)");
        var pages = blocks[block].Size >> Page.Shift;
        if (first % 64 != 0 || first >= pages)
            throw new StreamFormatException($"the destination's needed bitmap starts at page {first} of block '{blocks[block].Name}' ({pages} pages; a multiple of 64 inside the block)");
        var bitmap = p[16..].ToArray();
        var past = PageSet.FirstPast(bitmap, pages - first);
        if (past >= 0)
            throw new StreamFormatException($"the destination says it needs page {first + (ulong)past} of block '{blocks[block].Name}', which has {pages} pages");
        return new NeededPages(block, first, bitmap);
    }

    public static ulong ReadNeededEnd(in Reply reply) => BinaryPrimitives.ReadUInt64LittleEndian(Payload(reply, ReplyType.NeededEnd, 8, 8));

    public static PostcopyDoneMessage ReadDone(in Reply reply)
    {
        var p = Payload(reply, ReplyType.PostcopyDone, 64, 64 + MaxVcpus * 8);
        var vcpus = BinaryPrimitives.ReadUInt32LittleEndian(p[56..]);
        if (vcpus > MaxVcpus || p.Length != 64 + vcpus * 8)
            throw new StreamFormatException($"the destination's POSTCOPY_DONE names {vcpus} vCPUs in a {p.Length}-byte message");
        var each = new ulong[vcpus];
        for (var i = 0; i < each.Length; i++)
            each[i] = BinaryPrimitives.ReadUInt64LittleEndian(p[(64 + i * 8)..]);
        var head = new ulong[7];
        for (var i = 0; i < head.Length; i++)
            head[i] = BinaryPrimitives.ReadUInt64LittleEndian(p[(i * 8)..]);
        return new PostcopyDoneMessage(head[0], head[1], head[2], head[3], head[4], head[5], head[6], each);
    }

    private static ReadOnlySpan<byte> Payload(in Reply reply, ReplyType type, int min, int max)
    {
        if (reply.Type != type)
            throw new InvalidOperationException($"{reply.Type} read as {type}");
        var payload = reply.Payload ?? [];
        if (payload.Length < min || payload.Length > max)
            throw new StreamFormatException($"the destination's {type} message has a bad length {payload.Length}");
        return payload;
    }
}
