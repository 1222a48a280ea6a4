using System.Runtime.InteropServices;
using System.Runtime.CompilerServices;

namespace Ferry.Interop;

/// <summary>
/// The single owner of one mmap'd region. Unmapped exactly once, on Dispose. Accessors are bounds-checked so a
/// bad offset throws instead of touching memory outside the mapping.
/// </summary>
public sealed unsafe class MappedRegion : IDisposable
{
    private nint _address;

    private MappedRegion(nint address, ulong length)
    {
        _address = address;
        Length = length;
    }

    public ulong Length { get; }

    public nint Address
    {
        get
        {
            var address = Volatile.Read(ref _address);
            ObjectDisposedException.ThrowIf(address == 0, this);
            return address;
        }
    }

    public bool IsDisposed => Volatile.Read(ref _address) == 0;

    public static MappedRegion Map(SafeFd? fd, ulong length, int prot, int flags, long offset = 0)
    {
        var add = false;
        try
        {
            var raw = -1;
            if (fd is not null)
            {
                fd.DangerousAddRef(ref add);
                raw = fd.Fd;
            }
            var address = Libc.Mmap(0, (nuint)length, prot, flags, raw, offset);
            if (address == Libc.MAP_FAILED)
                ErrnoException.ThrowLast("mmap");
            return new MappedRegion(address, length);
        }
        finally
        {
            if (add)
                fd!.DangerousRelease();
        }
    }

    public static MappedRegion MapAnonymous(ulong length) =>
        Map(null, length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE);

    /// <summary>
    /// Private anonymous memory (MAP_NORESERVE: nothing is allocated until touched) whose start is a multiple of
    /// <paramref name="alignment"/> (a power of two), so that every aligned huge page of it can be mapped by one
    /// page-table entry. Done by reserving <paramref name="length"/> + <paramref name="alignment"/> without access,
    /// mapping the aligned part over it and giving back the head and tail.
    /// </summary>
    public static MappedRegion MapAnonymousAligned(ulong length, ulong alignment)
    {
        if (alignment == 0 || (alignment & (alignment - 1)) != 0 || alignment % 4096 != 0)
            throw new ArgumentOutOfRangeException(nameof(alignment), $"alignment {alignment} is not a power of two of at least 4096");
        if (length == 0 || length % 4096 != 0)
            throw new ArgumentOutOfRangeException(nameof(length), $"length {length} is not a positive multiple of 4096");
        var reserved = (nuint)(length + alignment);
        var start = Libc.Mmap(0, reserved, Libc.PROT_NONE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);
        if (start == Libc.MAP_FAILED)
            ErrnoException.ThrowLast("mmap(reserve)");
        var aligned = (nint)(((ulong)start + alignment - 1) & ~(alignment - 1));
        var got = Libc.Mmap(aligned, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE | Libc.MAP_FIXED, -1, 0);
        if (got == Libc.MAP_FAILED)
        {
            var errno = Libc.LastErrno;
            Libc.Munmap(start, reserved);
            throw new ErrnoException("mmap(MAP_FIXED)", errno);
        }
        // The unused head and tail of the reservation go back; the aligned part is the region.
        if (aligned != start)
            Libc.Munmap(start, (nuint)(aligned - start));
        var end = aligned + (nint)length;
        var reservedEnd = start + (nint)reserved;
        if (reservedEnd != end)
            Libc.Munmap(end, (nuint)(reservedEnd - end));
        return new MappedRegion(aligned, length);
    }

    /// <summary>
    /// Replaces [offset, offset + length) of this region, in place (MAP_FIXED), with a private copy-on-write mapping
    /// of <paramref name="file"/> from <paramref name="fileOffset"/>: reads see the file, the first write to a page
    /// gives this process its own copy, and the file is never changed. The region still owns the address range.
    /// </summary>
    public void MapFilePrivate(ulong offset, ulong length, SafeHandle file, long fileOffset)
    {
        var add = false;
        try
        {
            file.DangerousAddRef(ref add);
            Remap(offset, length, Libc.MAP_PRIVATE | Libc.MAP_NORESERVE, (int)file.DangerousGetHandle(), fileOffset);
        }
        finally
        {
            if (add)
                file.DangerousRelease();
        }
    }

    /// <summary>
    /// Replaces [offset, offset + length) of this region, in place, with fresh anonymous zero pages (what a discard
    /// must do where MADV_DONTNEED would bring back the contents of a private file mapping).
    /// </summary>
    public void MapAnonymous(ulong offset, ulong length) =>
        Remap(offset, length, Libc.MAP_PRIVATE | Libc.MAP_ANONYMOUS | Libc.MAP_NORESERVE, -1, 0);

    private void Remap(ulong offset, ulong length, int flags, int fd, long fileOffset)
    {
        CheckRange(offset, length);
        if (offset % 4096 != 0 || length % 4096 != 0 || length == 0)
            throw new ArgumentOutOfRangeException(nameof(offset), $"remap [0x{offset:X}, +0x{length:X}) is not a page-aligned, non-empty range");
        var want = Address + (nint)offset;
        var got = Libc.Mmap(want, (nuint)length, Libc.PROT_READ | Libc.PROT_WRITE, flags | Libc.MAP_FIXED, fd, fileOffset);
        if (got == Libc.MAP_FAILED)
            ErrnoException.ThrowLast("mmap(MAP_FIXED)");
        if (got != want)
            throw new InvalidOperationException($"mmap(MAP_FIXED) placed the range at 0x{got:X}, not 0x{want:X}");
    }

    /// <summary>A pointer to <paramref name="length"/> bytes at <paramref name="offset"/>, checked against the mapping.</summary>
    public byte* Pointer(ulong offset, ulong length = 1)
    {
        CheckRange(offset, length);
        return (byte*)Address + offset;
    }

    public Span<byte> GetSpan(ulong offset, int length)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(length);
        return new Span<byte>(Pointer(offset, (ulong)length), length);
    }

    public ref T GetRef<T>(ulong offset) where T : unmanaged => ref Unsafe.AsRef<T>(Pointer(offset, (ulong)sizeof(T)));

    private void CheckRange(ulong offset, ulong length)
    {
        if (offset > Length || length > Length - offset)
            throw new ArgumentOutOfRangeException(nameof(offset), $"range [0x{offset:X}, +0x{length:X}) is outside a 0x{Length:X}-byte mapping");
    }

    public void Dispose()
    {
        var address = Interlocked.Exchange(ref _address, 0);
        if (address != 0)
            Libc.Munmap(address, (nuint)Length);
    }
}
