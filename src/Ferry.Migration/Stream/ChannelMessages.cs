using System.Buffers.Binary;
using System.Text;

namespace Ferry.Migration.Stream;

/// <summary>
/// The first bytes of every channel but channel 0: which migration (session id from the stream header) and which
/// channel this connection is. Lets the destination refuse a stray or crossed connection before reading records.
/// </summary>
public static class ChannelHello
{
    public const int Size = 24;
    public static ReadOnlySpan<byte> Magic => "FERRYCHN"u8;

    public static byte[] Encode(ulong sessionId, int channel) => Encode(sessionId, (uint)channel);

    public static byte[] Encode(ulong sessionId, uint channel)
    {
        var bytes = new byte[Size];
        Magic.CopyTo(bytes);
        BinaryPrimitives.WriteUInt64LittleEndian(bytes.AsSpan(8), sessionId);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(16), channel);
        BinaryPrimitives.WriteUInt32LittleEndian(bytes.AsSpan(20), Crc32C.Compute(bytes.AsSpan(0, 20)));
        return bytes;
    }

    /// <summary>The index a postcopy urgent channel's hello names (docs/migration-stream.md, Postcopy).</summary>
    public const uint UrgentChannel = uint.MaxValue;

    /// <summary>Reads and checks a hello; returns the channel index it names.</summary>
    public static int Read(System.IO.Stream input, ulong sessionId, int channels)
    {
        var channel = ReadIndex(input, sessionId);
        if (channel == 0 || channel >= channels)
            throw new StreamFormatException($"channel hello names channel {channel}, outside 1..{channels - 1}");
        return (int)channel;
    }

    /// <summary>Reads and checks the hello of a postcopy urgent channel.</summary>
    public static void ReadUrgent(System.IO.Stream input, ulong sessionId)
    {
        var channel = ReadIndex(input, sessionId);
        if (channel != UrgentChannel)
            throw new StreamFormatException($"the urgent channel's hello names channel {channel}");
    }

    private static uint ReadIndex(System.IO.Stream input, ulong sessionId)
    {
        var bytes = new byte[Size];
        try
        {
            input.ReadExactly(bytes);
        }
        catch (EndOfStreamException)
        {
            throw new StreamFormatException("a channel connection closed before its hello");
        }
        if (!bytes.AsSpan(0, 8).SequenceEqual(Magic))
            throw new StreamFormatException("a channel connection did not start with a Ferry channel hello (bad magic)");
        if (BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(20)) != Crc32C.Compute(bytes.AsSpan(0, 20)))
            throw new StreamFormatException("channel hello checksum mismatch");
        var session = BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(8));
        if (session != sessionId)
            throw new StreamFormatException($"a channel of migration session {session:X16} joined session {sessionId:X16}");
        return BinaryPrimitives.ReadUInt32LittleEndian(bytes.AsSpan(16));
    }
}

public enum ReplyType : ushort
{
    /// <summary>The destination accepts the header: payload = the capability bits it accepts (u64).</summary>
    Accept = 1,
    /// <summary>Everything loaded and the guest is running on the destination.</summary>
    Resumed = 2,
    /// <summary>The destination refused or failed: payload = the reason (UTF-8, ≤ 1 KiB).</summary>
    Failed = 3,
    /// <summary>Every channel's records up to PASS_END of a pass are loaded: payload = the pass (u32). Capability pass-acks.</summary>
    PassLoaded = 4,
    /// <summary>Nothing to report, the destination is alive (capability keepalive): payload empty.</summary>
    KeepAlive = 5,

    /// <summary>Postcopy (16..31, on the urgent channel): the guest faulted on owed pages; send them now.</summary>
    PageRequest = 16,

    /// <summary>Postcopy: the state is restored and the guest runs on the destination.</summary>
    PostcopyRunning = 17,

    /// <summary>Postcopy recovery: part of the bitmap of pages the destination still needs.</summary>
    NeededPages = 18,

    /// <summary>Postcopy recovery: the needed bitmap is complete (payload: how many pages it holds).</summary>
    NeededEnd = 19,

    /// <summary>Postcopy: every owed page is in place; payload: the destination's figures.</summary>
    PostcopyDone = 20,
}

/// <summary>
/// A reply; <paramref name="Capabilities"/> holds ACCEPT's bits or PASS_LOADED's pass number; <paramref name="Payload"/>
/// the raw payload of the postcopy messages (decoded and checked by PostcopyMessages).
/// </summary>
public readonly record struct Reply(ReplyType Type, ulong Capabilities, string Message, byte[]? Payload = null);

/// <summary>
/// The destination's messages back to the source, on channel 0: u16 type, u16 0, u32 payload length, u32 CRC32C of
/// those 8 bytes and the payload, then the payload. Read by the source as hostile input too.
/// </summary>
public static class ReturnPath
{
    public const int MaxMessageBytes = 1024;

    public static void WriteAccept(System.IO.Stream output, ulong capabilities)
    {
        var payload = new byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, capabilities);
        Write(output, ReplyType.Accept, payload);
    }

    public static void WriteResumed(System.IO.Stream output) => Write(output, ReplyType.Resumed, []);

    public static void WriteKeepAlive(System.IO.Stream output) => Write(output, ReplyType.KeepAlive, []);

    public static void WritePassLoaded(System.IO.Stream output, uint pass)
    {
        var payload = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(payload, pass);
        Write(output, ReplyType.PassLoaded, payload);
    }

    public static void WriteFailed(System.IO.Stream output, string message)
    {
        var bytes = Encoding.UTF8.GetBytes(message);
        Write(output, ReplyType.Failed, bytes.AsSpan(0, Math.Min(bytes.Length, MaxMessageBytes)));
    }

    internal static void Write(System.IO.Stream output, ReplyType type, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[12 + payload.Length];
        BinaryPrimitives.WriteUInt16LittleEndian(frame, (ushort)type);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(4), (uint)payload.Length);
        payload.CopyTo(frame.AsSpan(12));
        var crc = Crc32C.Append(Crc32C.Compute(frame.AsSpan(0, 8)), payload);
        BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(8), crc);
        output.Write(frame);
        output.Flush();
    }

    public static Reply Read(System.IO.Stream input)
    {
        var frame = new byte[12];
        try
        {
            input.ReadExactly(frame);
            var type = (ReplyType)BinaryPrimitives.ReadUInt16LittleEndian(frame);
            var length = BinaryPrimitives.ReadUInt32LittleEndian(frame.AsSpan(4));
            if (!Enum.IsDefined(type) || BinaryPrimitives.ReadUInt16LittleEndian(frame.AsSpan(2)) != 0)
                throw new StreamFormatException($"the destination sent an unknown reply type {(ushort)type}");
            if (length > MaxMessageBytes || (type == ReplyType.Accept && length != 8) || (type is ReplyType.Resumed or ReplyType.KeepAlive && length != 0)
                || (type == ReplyType.PassLoaded && length != 4))
                throw new StreamFormatException($"the destination's {type} reply has a bad length {length}");
            var payload = new byte[length];
            input.ReadExactly(payload);
            if (BinaryPrimitives.ReadUInt32LittleEndian(frame.AsSpan(8)) != Crc32C.Append(Crc32C.Compute(frame.AsSpan(0, 8)), payload))
                throw new StreamFormatException($"the destination's {type} reply failed its checksum");
            return type switch
            {
                ReplyType.Accept => new Reply(type, BinaryPrimitives.ReadUInt64LittleEndian(payload), ""),
                ReplyType.PassLoaded => new Reply(type, BinaryPrimitives.ReadUInt32LittleEndian(payload), ""),
                ReplyType.Failed => new Reply(type, 0, Encoding.UTF8.GetString(payload)),
                >= ReplyType.PageRequest => new Reply(type, 0, "", payload),
                _ => new Reply(type, 0, ""),
            };
        }
        catch (EndOfStreamException)
        {
            throw new StreamFormatException("the destination closed the connection without a reply");
        }
    }
}
