using System.Runtime.InteropServices;

namespace Ferry.Interop.Userfault;

// Mirrors of the structs in <linux/userfaultfd.h>. Field names are the C names in PascalCase, so the layout test
// (tests/Ferry.Interop.Tests/UserfaultfdLayoutTests.cs) checks every size and offset against the machine's header;
// a field inside a union names its C member path with [CMember]. [UffdStruct] names the C struct.

[AttributeUsage(AttributeTargets.Struct)]
public sealed class UffdStructAttribute(string cName) : Attribute
{
    public string CName { get; } = cName;
}

/// <summary>
/// The struct, ioctl or constant is newer than some kernel headers: the layout test checks it only where the header
/// defines <see cref="Macro"/> (and checks its numbers independently of the header).
/// </summary>
[AttributeUsage(AttributeTargets.Struct | AttributeTargets.Field)]
public sealed class HeaderSinceAttribute(string macro) : Attribute
{
    public string Macro { get; } = macro;
}

/// <summary>The C member a field mirrors when its PascalCase name cannot say it (a member of a union).</summary>
[AttributeUsage(AttributeTargets.Field)]
public sealed class CMemberAttribute(string path) : Attribute
{
    public string Path { get; } = path;
}

/// <summary>UFFDIO_API: the API version asked for and the features wanted; the kernel answers with what it has.</summary>
[UffdStruct("uffdio_api")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioApi
{
    public ulong Api;
    public ulong Features;
    public ulong Ioctls;
}

[UffdStruct("uffdio_range")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioRange
{
    public ulong Start;
    public ulong Len;
}

/// <summary>UFFDIO_REGISTER: a range and the mode (MISSING); the kernel answers with the range ioctls it allows there.</summary>
[UffdStruct("uffdio_register")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioRegister
{
    public UffdioRange Range;
    public ulong Mode;
    public ulong Ioctls;
}

/// <summary>UFFDIO_COPY: atomically fills missing pages [dst, dst + len) from src; <see cref="Copy"/> is the bytes copied or -errno.</summary>
[UffdStruct("uffdio_copy")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioCopy
{
    public ulong Dst;
    public ulong Src;
    public ulong Len;
    public ulong Mode;
    public long Copy;
}

/// <summary>UFFDIO_ZEROPAGE: maps zero pages over a missing range; <see cref="Zeropage"/> is the bytes done or -errno.</summary>
[UffdStruct("uffdio_zeropage")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioZeropage
{
    public UffdioRange Range;
    public ulong Mode;
    public long Zeropage;
}

/// <summary>One message read from a userfaultfd (32 bytes, packed); Ferry asks only for page faults.</summary>
[UffdStruct("uffd_msg")]
[StructLayout(LayoutKind.Explicit, Size = 32)]
public struct UffdMsg
{
    [FieldOffset(0)] public byte Event;
    [FieldOffset(1)] public byte Reserved1;
    [FieldOffset(2)] public ushort Reserved2;
    [FieldOffset(4)] public uint Reserved3;
    [FieldOffset(8), CMember("arg.pagefault.flags")] public ulong PagefaultFlags;
    [FieldOffset(16), CMember("arg.pagefault.address")] public ulong PagefaultAddress;
    [FieldOffset(24), CMember("arg.pagefault.feat.ptid")] public uint PagefaultPtid;
}

/// <summary>
/// UFFDIO_MOVE (Linux 6.8): moves the pages of [src, src + len) of this process's anonymous memory to the missing
/// pages at dst, without copying; an aligned 2 MiB huge page moves whole. <see cref="Move"/> is the bytes moved or -errno.
/// </summary>
[UffdStruct("uffdio_move")]
[HeaderSince("_UFFDIO_MOVE")]
[StructLayout(LayoutKind.Sequential)]
public struct UffdioMove
{
    public ulong Dst;
    public ulong Src;
    public ulong Len;
    public ulong Mode;
    public long Move;
}
