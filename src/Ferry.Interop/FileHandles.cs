using System.Runtime.InteropServices;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Interop;

/// <summary>Descriptor operations on handles opened by .NET.</summary>
public static class FileHandles
{
    /// <summary>
    /// A second descriptor for the same open file (F_DUPFD_CLOEXEC): it keeps the file open after the original is
    /// closed, shares its offset-free positional reads, and is closed by its own handle.
    /// </summary>
    public static SafeFileHandle Duplicate(SafeHandle file)
    {
        var added = false;
        try
        {
            file.DangerousAddRef(ref added);
            var fd = ErrnoException.Check(Libc.Fcntl((int)file.DangerousGetHandle(), Libc.F_DUPFD_CLOEXEC, 0), "fcntl(F_DUPFD_CLOEXEC)");
            return new SafeFileHandle(fd, ownsHandle: true);
        }
        finally
        {
            if (added)
                file.DangerousRelease();
        }
    }
}
