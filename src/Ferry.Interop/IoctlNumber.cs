namespace Ferry.Interop;

/// <summary>
/// The kernel's ioctl request encoding (_IO, _IOR, _IOW, _IOWR of &lt;asm-generic/ioctl.h&gt;): direction, argument
/// size, type byte and number. The one home of the rule; each ioctl family (KVM, userfaultfd) names its numbers.
/// </summary>
public static class IoctlNumber
{
    public static uint Io(uint type, uint nr) => Encode(0, type, nr, 0);

    public static uint Ior(uint type, uint nr, int size) => Encode(2, type, nr, size);

    public static uint Iow(uint type, uint nr, int size) => Encode(1, type, nr, size);

    public static uint Iowr(uint type, uint nr, int size) => Encode(3, type, nr, size);

    private static uint Encode(uint direction, uint type, uint nr, int size) => (direction << 30) | ((uint)size << 16) | (type << 8) | nr;
}
