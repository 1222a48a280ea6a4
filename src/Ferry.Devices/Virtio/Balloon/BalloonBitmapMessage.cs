using System.Buffers.Binary;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>
/// Ferry's bitmap message (docs/virtio-balloon.md, extensions a and b): a 32-byte header, then a bitmap where bit
/// i means page start_pfn + i. Parsed as hostile input: every field is checked against the bytes received.
/// </summary>
public readonly record struct BalloonBitmapMessage(ushort Command, ushort Flags, ulong RequestId, ulong StartPfn, ReadOnlyMemory<byte> Bitmap)
{
    public const int HeaderSize = 32;
    public const int MaxBitmapBytes = 1 << 20;
    public const ushort CommandPages = 0;
    public const ushort CommandFreePages = 1;
    public const ushort FlagDone = 1;

    public static bool TryParse(byte[] data, out BalloonBitmapMessage message, out string error)
    {
        message = default;
        if (data.Length < HeaderSize)
        {
            error = $"bitmap message of {data.Length} bytes is shorter than its {HeaderSize}-byte header";
            return false;
        }
        var span = data.AsSpan();
        var command = BinaryPrimitives.ReadUInt16LittleEndian(span);
        var pageShift = BinaryPrimitives.ReadUInt16LittleEndian(span[2..]);
        var flags = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
        var requestId = BinaryPrimitives.ReadUInt64LittleEndian(span[8..]);
        var startPfn = BinaryPrimitives.ReadUInt64LittleEndian(span[16..]);
        var length = BinaryPrimitives.ReadUInt64LittleEndian(span[24..]);
        if (pageShift != Ferry.Kvm.Page.Shift)
            error = $"page_shift {pageShift} is not {Ferry.Kvm.Page.Shift}";
        else if (length % 8 != 0 || length > MaxBitmapBytes)
            error = $"bmap_len {length} is not a multiple of 8 up to {MaxBitmapBytes}";
        else if (length > (ulong)(data.Length - HeaderSize))
            error = $"bmap_len {length} is more than the {data.Length - HeaderSize} bytes sent";
        else if (startPfn % 64 != 0 || startPfn > (1UL << 40))
            error = $"start_pfn {startPfn} is not a multiple of 64 inside a 52-bit address space";
        else
        {
            error = "";
            message = new BalloonBitmapMessage(command, flags, requestId, startPfn, data.AsMemory(HeaderSize, (int)length));
            return true;
        }
        return false;
    }

    /// <summary>The runs of consecutive set bits as (first pfn, page count), without allocating.</summary>
    public Ferry.Kvm.PageSet.RunEnumerator Runs() => Ferry.Kvm.PageSet.RunsIn(Bitmap.Span, StartPfn);
}
