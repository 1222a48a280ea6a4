using System.Diagnostics.CodeAnalysis;
using System.Runtime.CompilerServices;

namespace Ferry.Interop;

/// <summary>A failed system call: the call's name and errno, with libc's message.</summary>
public sealed class ErrnoException : Exception
{
    public ErrnoException(string call, int errno)
        : base($"{call} failed: {Libc.ErrnoMessage(errno)} (errno {errno})")
    {
        Call = call;
        Errno = errno;
    }

    public ErrnoException() : this("unknown", 0) { }

    public ErrnoException(string message) : base(message) { Call = "unknown"; }

    public ErrnoException(string message, Exception inner) : base(message, inner) { Call = "unknown"; }

    public string Call { get; } = "unknown";

    public int Errno { get; }

    /// <summary>The one place where a -1 return becomes an exception carrying errno.</summary>
    public static int Check(int result, string call)
    {
        if (result < 0)
            ThrowLast(call);
        return result;
    }

    public static long Check(long result, string call)
    {
        if (result < 0)
            ThrowLast(call);
        return result;
    }

    [DoesNotReturn]
    [MethodImpl(MethodImplOptions.NoInlining)]
    public static void ThrowLast(string call) => throw new ErrnoException(call, Libc.LastErrno);
}
