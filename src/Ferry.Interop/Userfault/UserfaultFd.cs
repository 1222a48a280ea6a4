namespace Ferry.Interop.Userfault;

/// <summary>
/// One userfaultfd (<c>man 2 userfaultfd</c>, <c>Documentation/admin-guide/mm/userfaultfd.rst</c>): ranges registered
/// in MISSING mode report their first touch of a page as a message on the descriptor instead of being filled by the
/// kernel, and the touching thread (a host thread, or a vCPU inside KVM_RUN) sleeps until the page is placed with
/// UFFDIO_COPY or UFFDIO_ZEROPAGE. Owns the descriptor (a <see cref="SafeFd"/>, non-blocking, close-on-exec).
/// <para>
/// Closing it (the last reference) unregisters every range and wakes every thread still waiting, which then gets
/// what the kernel would have given without userfaultfd (a zero page): whoever closes it must know that no thread
/// that could still be waiting would be harmed by that.
/// </para>
/// </summary>
public sealed unsafe class UserfaultFd : IDisposable
{
    private const string DevicePath = "/dev/userfaultfd";

    private UserfaultFd(SafeFd handle, ulong features, string via)
    {
        Handle = handle;
        Features = features;
        OpenedVia = via;
    }

    public SafeFd Handle { get; }

    /// <summary>The features the kernel reported in UFFDIO_API (all it supports, whether asked for or not).</summary>
    public ulong Features { get; }

    /// <summary>How the descriptor was made: "/dev/userfaultfd" or "userfaultfd(2)".</summary>
    public string OpenedVia { get; }

    /// <summary>
    /// Makes a userfaultfd that also reports faults taken inside the kernel (KVM reading guest memory for a vCPU):
    /// through /dev/userfaultfd (access is the device's file mode), else through the system call (which needs
    /// CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1 for kernel faults). Then the API handshake asking for
    /// <paramref name="features"/>. Throws an <see cref="ErrnoException"/> naming what failed.
    /// </summary>
    public static UserfaultFd Open(ulong features = 0)
    {
        SafeFd handle;
        string via;
        var device = Libc.Open(DevicePath, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (device >= 0)
        {
            using var dev = new SafeFd(device);
            handle = SafeFd.FromResult(Libc.Ioctl(dev.Fd, UffdIoctls.USERFAULTFD_IOC_NEW, Libc.O_CLOEXEC | Libc.O_NONBLOCK), "ioctl(USERFAULTFD_IOC_NEW)");
            via = DevicePath;
        }
        else
        {
            var deviceErrno = Libc.LastErrno;
            var fd = Libc.Syscall(Libc.SYS_userfaultfd, Libc.O_CLOEXEC | Libc.O_NONBLOCK);
            if (fd < 0)
            {
                var errno = Libc.LastErrno;
                throw new ErrnoException($"userfaultfd: {DevicePath} could not be opened ({Libc.ErrnoMessage(deviceErrno)}) and userfaultfd(2) failed: {Libc.ErrnoMessage(errno)} (errno {errno})", new ErrnoException("userfaultfd", errno));
            }
            handle = new SafeFd((int)fd);
            via = "userfaultfd(2)";
        }
        try
        {
            var api = new UffdioApi { Api = UffdConstants.UFFD_API, Features = features };
            ErrnoException.Check(Libc.Ioctl(handle.Fd, UffdIoctls.UFFDIO_API, &api), "ioctl(UFFDIO_API)");
            return new UserfaultFd(handle, api.Features, via);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    /// <summary>
    /// Registers [address, address + length) in MISSING mode. Throws when the kernel does not allow UFFDIO_COPY,
    /// UFFDIO_ZEROPAGE and UFFDIO_WAKE there (the three the demand pager needs).
    /// </summary>
    public void Register(nint address, ulong length)
    {
        var register = new UffdioRegister
        {
            Range = new UffdioRange { Start = (ulong)address, Len = length },
            Mode = UffdConstants.UFFDIO_REGISTER_MODE_MISSING,
        };
        ErrnoException.Check(Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_REGISTER, &register), "ioctl(UFFDIO_REGISTER)");
        const ulong Needed = (1UL << UffdConstants._UFFDIO_COPY) | (1UL << UffdConstants._UFFDIO_ZEROPAGE) | (1UL << UffdConstants._UFFDIO_WAKE);
        if ((register.Ioctls & Needed) != Needed)
            throw new ErrnoException($"ioctl(UFFDIO_REGISTER): the range allows ioctls 0x{register.Ioctls:X}, not COPY, ZEROPAGE and WAKE");
    }

    /// <summary>Unregisters the range: its missing pages fault in as the kernel fills them, and waiting threads are woken.</summary>
    public void Unregister(nint address, ulong length)
    {
        var range = new UffdioRange { Start = (ulong)address, Len = length };
        ErrnoException.Check(Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_UNREGISTER, &range), "ioctl(UFFDIO_UNREGISTER)");
    }

    /// <summary>
    /// UFFDIO_COPY of <paramref name="length"/> bytes from <paramref name="source"/> to the missing pages at
    /// <paramref name="destination"/>, waking the threads waiting on them. Returns 0 when all were copied, else the
    /// errno (EEXIST: a page was already there; EAGAIN: interrupted, call again for the rest) with
    /// <paramref name="copied"/> = bytes placed before it.
    /// </summary>
    public int Copy(nint destination, nint source, ulong length, out ulong copied)
    {
        var copy = new UffdioCopy { Dst = (ulong)destination, Src = (ulong)source, Len = length };
        var result = Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_COPY, &copy);
        var errno = result < 0 ? Libc.LastErrno : 0;
        copied = copy.Copy > 0 ? (ulong)copy.Copy : 0;
        return errno;
    }

    /// <summary>
    /// UFFDIO_ZEROPAGE over missing pages; same contract as <see cref="Copy"/>. <paramref name="wake"/> false: the
    /// waiting threads are left asleep (the caller wakes them with <see cref="Wake"/> once its bookkeeping is done).
    /// </summary>
    public int ZeroPage(nint destination, ulong length, out ulong zeroed, bool wake = true)
    {
        var zero = new UffdioZeropage
        {
            Range = new UffdioRange { Start = (ulong)destination, Len = length },
            Mode = wake ? 0 : UffdConstants.UFFDIO_ZEROPAGE_MODE_DONTWAKE,
        };
        var result = Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_ZEROPAGE, &zero);
        var errno = result < 0 ? Libc.LastErrno : 0;
        zeroed = zero.Zeropage > 0 ? (ulong)zero.Zeropage : 0;
        return errno;
    }

    /// <summary>
    /// UFFDIO_MOVE of <paramref name="length"/> bytes of this process's anonymous memory at <paramref name="source"/>
    /// to the missing pages at <paramref name="destination"/> (a registered range), without copying: an aligned whole
    /// huge page moves as one, so the destination gets a huge page; the source range is left empty. Wakes the threads
    /// waiting on the pages. Needs <see cref="UffdConstants.UFFD_FEATURE_MOVE"/> asked for at <see cref="Open"/>.
    /// Same contract as <see cref="Copy"/> (EEXIST, EAGAIN, bytes moved before a failure).
    /// </summary>
    public int Move(nint destination, nint source, ulong length, out ulong moved)
    {
        var move = new UffdioMove { Dst = (ulong)destination, Src = (ulong)source, Len = length };
        var result = Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_MOVE, &move);
        var errno = result < 0 ? Libc.LastErrno : 0;
        moved = move.Move > 0 ? (ulong)move.Move : 0;
        return errno;
    }

    /// <summary>Wakes the threads waiting on pages of the range (e.g. after another thread placed them).</summary>
    public void Wake(nint address, ulong length)
    {
        var range = new UffdioRange { Start = (ulong)address, Len = length };
        ErrnoException.Check(Libc.Ioctl(Handle.Fd, UffdIoctls.UFFDIO_WAKE, &range), "ioctl(UFFDIO_WAKE)");
    }

    /// <summary>Reads the queued messages into <paramref name="into"/>; 0 when none are queued (the descriptor never blocks).</summary>
    public int ReadMessages(Span<UffdMsg> into)
    {
        fixed (UffdMsg* p = into)
        {
            var n = Libc.Read(Handle.Fd, p, (nuint)(into.Length * sizeof(UffdMsg)));
            if (n < 0)
            {
                var errno = Libc.LastErrno;
                if (errno is Libc.EAGAIN or Libc.EINTR)
                    return 0;
                throw new ErrnoException("read(userfaultfd)", errno);
            }
            return (int)(n / sizeof(UffdMsg));
        }
    }

    public void Dispose() => Handle.Dispose();
}
