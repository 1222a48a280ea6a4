using System.Runtime.InteropServices;

namespace Ferry.Interop;

/// <summary>Owns one Linux file descriptor; closes it exactly once.</summary>
public sealed class SafeFd : SafeHandle
{
    public SafeFd() : base(-1, ownsHandle: true) { }

    public SafeFd(int fd) : base(-1, ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle < 0;

    /// <summary>The raw descriptor, for ioctl and friends. Valid while this handle is alive.</summary>
    public int Fd => (int)handle;

    protected override bool ReleaseHandle() => Libc.Close((int)handle) == 0;

    public static SafeFd FromResult(int fd, string call) => new(ErrnoException.Check(fd, call));
}
