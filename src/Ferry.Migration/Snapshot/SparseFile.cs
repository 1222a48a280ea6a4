using Ferry.Interop;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Migration.Snapshot;

/// <summary>
/// The few things a snapshot needs from a file beyond positional reads and writes (which go through
/// <see cref="RandomAccess"/>): punching holes and measuring what is allocated. The raw descriptor is borrowed
/// with a reference on the handle, so it cannot be closed and reused under the call.
/// </summary>
internal static class SparseFile
{
    /// <summary>Deallocates [offset, offset + length): it reads as zeros afterwards and the file keeps its size.</summary>
    public static void PunchHole(SafeFileHandle file, long offset, long length)
    {
        var added = false;
        try
        {
            file.DangerousAddRef(ref added);
            var fd = (int)file.DangerousGetHandle();
            ErrnoException.Check(Libc.Fallocate(fd, Libc.FALLOC_FL_PUNCH_HOLE | Libc.FALLOC_FL_KEEP_SIZE, offset, length), "fallocate(PUNCH_HOLE)");
        }
        finally
        {
            if (added)
                file.DangerousRelease();
        }
    }

    /// <summary>
    /// Bytes of the file that hold data (SEEK_DATA/SEEK_HOLE): everything else is a hole and takes no disk space.
    /// This is st_blocks without the filesystem's own bookkeeping blocks; this assembly has no unsafe code, so it
    /// cannot call fstat.
    /// </summary>
    public static long DataBytes(SafeFileHandle file)
    {
        long total = 0;
        foreach (var (_, length) in FileExtents.Data(file, 0, RandomAccess.GetLength(file)))
            total += length;
        return total;
    }

    /// <summary>Fills <paramref name="buffer"/> from <paramref name="offset"/>; false when the file ends first.</summary>
    public static bool ReadExactly(SafeFileHandle file, Span<byte> buffer, long offset)
    {
        while (!buffer.IsEmpty)
        {
            var n = RandomAccess.Read(file, buffer, offset);
            if (n <= 0)
                return false;
            buffer = buffer[n..];
            offset += n;
        }
        return true;
    }
}
