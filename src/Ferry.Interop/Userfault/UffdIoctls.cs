namespace Ferry.Interop.Userfault;

/// <summary>
/// userfaultfd ioctl request numbers and constants, named exactly as the C macros in &lt;linux/userfaultfd.h&gt; so
/// the layout test can check each against the machine's header. Encoded with the kernel's _IOC rule (<see cref="IoctlNumber"/>).
/// </summary>
public static unsafe class UffdIoctls
{
    private const uint UFFDIO = 0xAA;

    /// <summary>On /dev/userfaultfd: makes a new userfaultfd (the argument is its open flags).</summary>
    public static readonly uint USERFAULTFD_IOC_NEW = IoctlNumber.Io(UFFDIO, 0x00);

    public static readonly uint UFFDIO_API = IoctlNumber.Iowr(UFFDIO, 0x3F, sizeof(UffdioApi));
    public static readonly uint UFFDIO_REGISTER = IoctlNumber.Iowr(UFFDIO, 0x00, sizeof(UffdioRegister));
    public static readonly uint UFFDIO_UNREGISTER = IoctlNumber.Ior(UFFDIO, 0x01, sizeof(UffdioRange));
    public static readonly uint UFFDIO_WAKE = IoctlNumber.Ior(UFFDIO, 0x02, sizeof(UffdioRange));
    public static readonly uint UFFDIO_COPY = IoctlNumber.Iowr(UFFDIO, 0x03, sizeof(UffdioCopy));
    public static readonly uint UFFDIO_ZEROPAGE = IoctlNumber.Iowr(UFFDIO, 0x04, sizeof(UffdioZeropage));

    [HeaderSince("_UFFDIO_MOVE")]
    public static readonly uint UFFDIO_MOVE = IoctlNumber.Iowr(UFFDIO, 0x05, sizeof(UffdioMove));
}

/// <summary>The constants of &lt;linux/userfaultfd.h&gt; Ferry uses (checked against the header by the layout test).</summary>
public static class UffdConstants
{
    public const ulong UFFD_API = 0xAA;

    public const byte UFFD_EVENT_PAGEFAULT = 0x12;

    public const ulong UFFD_PAGEFAULT_FLAG_WRITE = 1;

    public const ulong UFFD_FEATURE_MISSING_SHMEM = 1 << 5;
    public const ulong UFFD_FEATURE_SIGBUS = 1 << 7;
    public const ulong UFFD_FEATURE_THREAD_ID = 1 << 8;

    [HeaderSince("_UFFDIO_MOVE")]
    public const ulong UFFD_FEATURE_MOVE = 1 << 16;

    public const ulong UFFDIO_REGISTER_MODE_MISSING = 1;

    public const ulong UFFDIO_COPY_MODE_DONTWAKE = 1;
    public const ulong UFFDIO_ZEROPAGE_MODE_DONTWAKE = 1;

    // Bit numbers of the ioctls in uffdio_register.ioctls (what the kernel allows on a registered range).
    public const int _UFFDIO_WAKE = 0x02;
    public const int _UFFDIO_COPY = 0x03;
    public const int _UFFDIO_ZEROPAGE = 0x04;
}
