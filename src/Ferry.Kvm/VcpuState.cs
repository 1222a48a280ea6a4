using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>
/// Everything KVM holds for one vCPU that must move with it to another process: general and special registers,
/// the XSAVE area (FPU/SSE/AVX), XCRs, debug registers, the MSRs that matter, pending events and the MP state.
/// Read and written only while the vCPU is paused.
/// </summary>
public sealed class VcpuState
{
    public int Index { get; init; }
    public KvmMpState MpState { get; init; }
    public KvmRegs Regs { get; init; }
    public KvmSregs Sregs { get; init; }
    public byte[] Xsave { get; init; } = [];
    public KvmXcrs Xcrs { get; init; }
    public KvmDebugRegs DebugRegs { get; init; }
    public KvmMsrEntry[] Msrs { get; init; } = [];
    public KvmVcpuEvents Events { get; init; }
    public uint TscKhz { get; init; }

    /// <summary>Reads the state in the order that keeps it consistent: MP state first, events last.</summary>
    public static VcpuState Capture(Vcpu vcpu, ReadOnlySpan<uint> msrIndices) => new()
    {
        Index = vcpu.Index,
        MpState = vcpu.GetMpState(),
        Regs = vcpu.GetRegs(),
        Sregs = vcpu.GetSregs(),
        Xsave = vcpu.GetXsave(),
        Xcrs = vcpu.GetXcrs(),
        DebugRegs = vcpu.GetDebugRegs(),
        Msrs = vcpu.GetMsrs(msrIndices),
        TscKhz = vcpu.GetTscKhz(),
        Events = vcpu.GetEvents(),
    };

    /// <summary>
    /// Writes the state back: REGS before events (SET_REGS clears pending exceptions), SREGS before MSRs,
    /// the TSC deadline after the TSC, events last.
    /// </summary>
    public void Restore(Vcpu vcpu)
    {
        vcpu.SetMpState(MpState);
        vcpu.SetRegs(Regs);
        vcpu.SetSregs(Sregs);
        vcpu.SetXsave(Xsave);
        vcpu.SetXcrs(Xcrs);
        vcpu.SetDebugRegs(DebugRegs);
        var deferred = Msrs.Where(m => m.Index == MsrPolicy.IA32_TSC_DEADLINE).ToArray();
        vcpu.SetMsrs(Msrs.Where(m => m.Index != MsrPolicy.IA32_TSC_DEADLINE).ToArray());
        vcpu.SetMsrs(deferred);
        vcpu.SetEvents(Events);
    }
}

/// <summary>Which MSRs are saved with a vCPU: those the host's KVM can save, filtered by an allow-list.</summary>
public static class MsrPolicy
{
    public const uint IA32_TSC = 0x10;
    public const uint IA32_TSC_DEADLINE = 0x6E0;

    private static readonly (uint First, uint Last)[] SavedRanges =
    [
        (0x10, 0x10),           // TSC
        (0x1B, 0x1B),           // APIC_BASE
        (0x3A, 0x3B),           // FEATURE_CONTROL, TSC_ADJUST
        (0x48, 0x48),           // SPEC_CTRL
        (0x174, 0x176),         // SYSENTER_CS/ESP/EIP
        (0x1A0, 0x1A0),         // MISC_ENABLE
        (0x1D9, 0x1D9),         // DEBUGCTL
        (0x200, 0x2FF),         // MTRRs and PAT
        (0x6E0, 0x6E0),         // TSC_DEADLINE
        (0xC0000080, 0xC0000080), // EFER (also in sregs)
        (0xC0000081, 0xC0000084), // STAR, LSTAR, CSTAR, SYSCALL_MASK
        (0xC0000100, 0xC0000103), // FS_BASE, GS_BASE, KERNEL_GS_BASE, TSC_AUX
        (0x4B564D00, 0x4B564DFF), // KVM paravirtual MSRs (kvmclock, steal time, async PF, PV EOI)
    ];

    public static uint[] Select(IEnumerable<uint> hostSaveable) =>
        [.. hostSaveable.Where(index => SavedRanges.Any(r => index >= r.First && index <= r.Last)).Order()];
}
