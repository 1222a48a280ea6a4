using System.Runtime.InteropServices;
using Ferry.Interop;
using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>/dev/kvm: capability queries and VM creation.</summary>
public sealed unsafe class KvmSystem : IDisposable
{
    public const string DevicePath = "/dev/kvm";

    private readonly SafeFd _fd;

    private KvmSystem(SafeFd fd, string path)
    {
        _fd = fd;
        var version = Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_API_VERSION, 0);
        if (version < 0)
            throw new KvmUnavailableException($"{path} is not a KVM device ({Libc.ErrnoMessage(Libc.LastErrno)})");
        if (version != KvmConstants.KVM_API_VERSION)
            throw new KvmUnavailableException($"{path} speaks KVM API version {version}, Ferry needs {KvmConstants.KVM_API_VERSION}");
        VcpuMmapSize = Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE");
    }

    public int VcpuMmapSize { get; }

    /// <summary>
    /// The KVM device to open: /dev/kvm, or $FERRY_KVM_DEVICE (tests point it elsewhere to check the errors).
    /// </summary>
    public static string ConfiguredDevicePath => Environment.GetEnvironmentVariable("FERRY_KVM_DEVICE") is { Length: > 0 } path ? path : DevicePath;

    /// <summary>Opens the KVM device, or throws <see cref="KvmUnavailableException"/> saying why it cannot be used.</summary>
    public static KvmSystem Open() => Open(ConfiguredDevicePath);

    public static KvmSystem Open(string path)
    {
        var fd = Libc.Open(path, Libc.O_RDWR | Libc.O_CLOEXEC, 0);
        if (fd < 0)
            throw OpenError(path, Libc.LastErrno);
        var handle = new SafeFd(fd);
        try
        {
            return new KvmSystem(handle, path);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    internal static KvmUnavailableException OpenError(string path, int errno) => errno switch
    {
        Libc.ENOENT => new KvmUnavailableException($"{path} does not exist: this host has no KVM"),
        Libc.EACCES or Libc.EPERM => new KvmUnavailableException($"{path} exists but this user may not open it (permission denied)"),
        _ => new KvmUnavailableException($"cannot open {path}: {Libc.ErrnoMessage(errno)}"),
    };

    /// <summary>Why KVM cannot be used here, or null when it can. Used by tests to skip with a reason.</summary>
    public static string? UnavailableReason()
    {
        try
        {
            using var kvm = Open();
            return null;
        }
        catch (KvmUnavailableException e)
        {
            return e.Message;
        }
    }

    public int CheckExtension(int capability) => Math.Max(0, Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_CHECK_EXTENSION, capability));

    public VirtualMachine CreateVm()
    {
        var vmFd = Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_CREATE_VM, 0);
        // KVM_CREATE_VM can fail with EINTR under signals; retry a few times as QEMU does.
        for (var i = 0; vmFd < 0 && Libc.LastErrno == Libc.EINTR && i < 8; i++)
            vmFd = Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_CREATE_VM, 0);
        return new VirtualMachine(this, SafeFd.FromResult(vmFd, "KVM_CREATE_VM"));
    }

    /// <summary>KVM_GET_SUPPORTED_CPUID: the CPUID entries this host's KVM can expose.</summary>
    public KvmCpuidEntry2[] GetSupportedCpuid()
    {
        for (var capacity = 128; capacity <= 4096; capacity *= 2)
        {
            var bytes = sizeof(KvmCpuid2) + capacity * sizeof(KvmCpuidEntry2);
            var buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
            try
            {
                ((KvmCpuid2*)buffer)->Nent = (uint)capacity;
                if (Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_SUPPORTED_CPUID, buffer) < 0)
                {
                    if (Libc.LastErrno == Libc.E2BIG)
                        continue;
                    ErrnoException.ThrowLast("KVM_GET_SUPPORTED_CPUID");
                }
                var count = (int)((KvmCpuid2*)buffer)->Nent;
                return new ReadOnlySpan<KvmCpuidEntry2>(buffer + sizeof(KvmCpuid2), count).ToArray();
            }
            finally
            {
                NativeMemory.Free(buffer);
            }
        }
        throw new ErrnoException("KVM_GET_SUPPORTED_CPUID", Libc.E2BIG);
    }

    /// <summary>KVM_GET_MSR_INDEX_LIST: every MSR index KVM can save and restore.</summary>
    public uint[] GetMsrIndexList()
    {
        var header = new KvmMsrList { Nmsrs = 0 };
        Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_MSR_INDEX_LIST, &header); // E2BIG, but fills in the count
        var count = (int)header.Nmsrs;
        var buffer = (byte*)NativeMemory.AllocZeroed((nuint)(4 + count * 4));
        try
        {
            ((KvmMsrList*)buffer)->Nmsrs = (uint)count;
            Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_MSR_INDEX_LIST, buffer), "KVM_GET_MSR_INDEX_LIST");
            return new ReadOnlySpan<uint>(buffer + 4, (int)((KvmMsrList*)buffer)->Nmsrs).ToArray();
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    internal static int Check(int result, string ioctl) => ErrnoException.Check(result, ioctl);

    public void Dispose() => _fd.Dispose();
}

/// <summary>KVM cannot be used on this host; the message says why, in words a user can act on.</summary>
public sealed class KvmUnavailableException : Exception
{
    public KvmUnavailableException() { }

    public KvmUnavailableException(string message) : base(message) { }

    public KvmUnavailableException(string message, Exception inner) : base(message, inner) { }
}
