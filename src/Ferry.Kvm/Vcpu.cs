using System.Runtime.InteropServices;
using Ferry.Interop;
using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>
/// One KVM vCPU: its fd, its shared kvm_run page and its register state. Run it from one thread only
/// (<see cref="VcpuRunner"/> does); the state accessors are only valid while it is not inside KVM_RUN.
/// </summary>
public sealed unsafe partial class Vcpu : IDisposable
{
    private readonly SafeFd _fd;
    private readonly MappedRegion _run;

    internal Vcpu(VirtualMachine vm, int index, SafeFd fd)
    {
        Vm = vm;
        Index = index;
        _fd = fd;
        _run = MappedRegion.Map(fd, (ulong)vm.Kvm.VcpuMmapSize, Libc.PROT_READ | Libc.PROT_WRITE, Libc.MAP_SHARED);
    }

    public VirtualMachine Vm { get; }

    public int Index { get; }

    internal int Fd => _fd.Fd;

    /// <summary>The kvm_run page, shared with the kernel.</summary>
    public byte* RunPage => (byte*)_run.Address;

    public uint ExitReason => *(uint*)(RunPage + KvmRunOffsets.exit_reason);

    /// <summary>Makes the next (or current) KVM_RUN return at once with EINTR; set from any thread.</summary>
    public void SetImmediateExit(bool value) => Volatile.Write(ref RunPage[KvmRunOffsets.immediate_exit], value ? (byte)1 : (byte)0);

    /// <summary>Enters the guest. Returns 0 on a VM exit, or the errno (EINTR when kicked).</summary>
    public int Run()
    {
        var rc = Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_RUN, 0);
        return rc < 0 ? Libc.LastErrno : 0;
    }

    /// <summary>Lets <paramref name="signal"/> through only while this vCPU is inside KVM_RUN.</summary>
    public void SetSignalMaskUnblocking(int signal)
    {
        // struct kvm_signal_mask { u32 len; u8 sigset[]; } with the kernel's 8-byte sigset: all signals
        // this thread blocks, minus the kick signal.
        SigSet current;
        if (Libc.PthreadSigmask(Libc.SIG_BLOCK, null, &current) != 0)
            throw new InvalidOperationException("pthread_sigmask failed");
        var kernelSet = current.Bits[0] & ~(1UL << (signal - 1));
        var buffer = stackalloc byte[4 + 8];
        *(uint*)buffer = 8;
        *(ulong*)(buffer + 4) = kernelSet;
        KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_SET_SIGNAL_MASK, buffer), "KVM_SET_SIGNAL_MASK");
    }

    public KvmRegs GetRegs() => Get<KvmRegs>(KvmIoctls.KVM_GET_REGS, "KVM_GET_REGS");

    public void SetRegs(in KvmRegs regs) => Set(KvmIoctls.KVM_SET_REGS, regs, "KVM_SET_REGS");

    public KvmSregs GetSregs() => Get<KvmSregs>(KvmIoctls.KVM_GET_SREGS, "KVM_GET_SREGS");

    public void SetSregs(in KvmSregs sregs) => Set(KvmIoctls.KVM_SET_SREGS, sregs, "KVM_SET_SREGS");

    public KvmFpu GetFpu() => Get<KvmFpu>(KvmIoctls.KVM_GET_FPU, "KVM_GET_FPU");

    public void SetFpu(in KvmFpu fpu) => Set(KvmIoctls.KVM_SET_FPU, fpu, "KVM_SET_FPU");

    public KvmXcrs GetXcrs() => Get<KvmXcrs>(KvmIoctls.KVM_GET_XCRS, "KVM_GET_XCRS");

    public void SetXcrs(in KvmXcrs xcrs) => Set(KvmIoctls.KVM_SET_XCRS, xcrs, "KVM_SET_XCRS");

    public KvmVcpuEvents GetEvents() => Get<KvmVcpuEvents>(KvmIoctls.KVM_GET_VCPU_EVENTS, "KVM_GET_VCPU_EVENTS");

    public void SetEvents(in KvmVcpuEvents events) => Set(KvmIoctls.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS");

    public KvmMpState GetMpState() => Get<KvmMpState>(KvmIoctls.KVM_GET_MP_STATE, "KVM_GET_MP_STATE");

    public void SetMpState(in KvmMpState state) => Set(KvmIoctls.KVM_SET_MP_STATE, state, "KVM_SET_MP_STATE");

    public KvmDebugRegs GetDebugRegs() => Get<KvmDebugRegs>(KvmIoctls.KVM_GET_DEBUGREGS, "KVM_GET_DEBUGREGS");

    public void SetDebugRegs(in KvmDebugRegs regs) => Set(KvmIoctls.KVM_SET_DEBUGREGS, regs, "KVM_SET_DEBUGREGS");

    /// <summary>The XSAVE area: 4 KiB, or larger when the host's KVM_CAP_XSAVE2 says so.</summary>
    public byte[] GetXsave()
    {
        var size = Math.Max(sizeof(KvmXsave), Vm.Kvm.CheckExtension(KvmConstants.KVM_CAP_XSAVE2));
        var buffer = new byte[size];
        fixed (byte* p = buffer)
        {
            // KVM_GET_XSAVE2 shares the number of KVM_GET_XSAVE but with a size-independent encoding; the legacy
            // call is enough for a 4 KiB area and is what PVM and older hosts support.
            KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_XSAVE, p), "KVM_GET_XSAVE");
        }
        return buffer;
    }

    public void SetXsave(byte[] area)
    {
        if (area.Length < sizeof(KvmXsave))
            throw new ArgumentException($"XSAVE area of {area.Length} bytes is shorter than {sizeof(KvmXsave)}", nameof(area));
        fixed (byte* p = area)
            KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_SET_XSAVE, p), "KVM_SET_XSAVE");
    }

    public void SetCpuid(ReadOnlySpan<KvmCpuidEntry2> entries)
    {
        var bytes = sizeof(KvmCpuid2) + entries.Length * sizeof(KvmCpuidEntry2);
        var buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            ((KvmCpuid2*)buffer)->Nent = (uint)entries.Length;
            entries.CopyTo(new Span<KvmCpuidEntry2>(buffer + sizeof(KvmCpuid2), entries.Length));
            KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_SET_CPUID2, buffer), "KVM_SET_CPUID2");
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    /// <summary>Reads the given MSRs; MSRs the host refuses are left out of the result.</summary>
    public KvmMsrEntry[] GetMsrs(ReadOnlySpan<uint> indices)
    {
        var result = new List<KvmMsrEntry>(indices.Length);
        var remaining = indices.ToArray().AsSpan();
        while (remaining.Length > 0)
        {
            var done = MsrCall(KvmIoctls.KVM_GET_MSRS, remaining, null, result);
            // KVM stops at the first MSR it cannot read; skip that one and go on.
            remaining = remaining[Math.Min(remaining.Length, done + 1)..];
        }
        return [.. result];
    }

    /// <summary>
    /// Writes MSRs. KVM stops at the first MSR it refuses; a refused MSR whose value is 0 (the reset value: the
    /// feature it controls is off) is skipped, any other refusal is an error naming the MSR.
    /// </summary>
    public void SetMsrs(ReadOnlySpan<KvmMsrEntry> entries)
    {
        var remaining = entries.ToArray().AsSpan();
        while (remaining.Length > 0)
        {
            var indices = new uint[remaining.Length];
            for (var i = 0; i < remaining.Length; i++)
                indices[i] = remaining[i].Index;
            var done = MsrCall(KvmIoctls.KVM_SET_MSRS, indices, remaining, null);
            if (done == remaining.Length)
                return;
            if (remaining[done].Data != 0)
                throw new InvalidOperationException($"KVM_SET_MSRS refused MSR 0x{remaining[done].Index:X} = 0x{remaining[done].Data:X}");
            remaining = remaining[(done + 1)..];
        }
    }

    private int MsrCall(uint request, ReadOnlySpan<uint> indices, ReadOnlySpan<KvmMsrEntry> values, List<KvmMsrEntry>? output)
    {
        var bytes = sizeof(KvmMsrs) + indices.Length * sizeof(KvmMsrEntry);
        var buffer = (byte*)NativeMemory.AllocZeroed((nuint)bytes);
        try
        {
            ((KvmMsrs*)buffer)->Nmsrs = (uint)indices.Length;
            var entries = new Span<KvmMsrEntry>(buffer + sizeof(KvmMsrs), indices.Length);
            for (var i = 0; i < indices.Length; i++)
                entries[i] = values.IsEmpty ? new KvmMsrEntry { Index = indices[i] } : values[i];
            var done = KvmSystem.Check(Libc.Ioctl(_fd.Fd, request, buffer), request == KvmIoctls.KVM_GET_MSRS ? "KVM_GET_MSRS" : "KVM_SET_MSRS");
            output?.AddRange(entries[..done]);
            return done;
        }
        finally
        {
            NativeMemory.Free(buffer);
        }
    }

    public uint GetTscKhz() => (uint)KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_TSC_KHZ, 0), "KVM_GET_TSC_KHZ");

    private T Get<T>(uint request, string name) where T : unmanaged
    {
        T value;
        KvmSystem.Check(Libc.Ioctl(_fd.Fd, request, &value), name);
        return value;
    }

    private void Set<T>(uint request, in T value, string name) where T : unmanaged
    {
        fixed (T* p = &value)
            KvmSystem.Check(Libc.Ioctl(_fd.Fd, request, p), name);
    }

    public void Dispose()
    {
        _run.Dispose();
        _fd.Dispose();
    }
}
