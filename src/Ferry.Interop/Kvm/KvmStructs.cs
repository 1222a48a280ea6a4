using System.Runtime.InteropServices;

namespace Ferry.Interop.Kvm;

// Mirrors of the structs in <linux/kvm.h> and <asm/kvm.h> (x86-64). Field names are the C names in PascalCase
// (snake_case converts back one to one), so the layout test can check every size and offset against the
// machine's headers. [KvmStruct] names the C struct.

[AttributeUsage(AttributeTargets.Struct)]
public sealed class KvmStructAttribute(string cName) : Attribute
{
    public string CName { get; } = cName;
}

[KvmStruct("kvm_regs")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmRegs
{
    public ulong Rax, Rbx, Rcx, Rdx, Rsi, Rdi, Rsp, Rbp;
    public ulong R8, R9, R10, R11, R12, R13, R14, R15;
    public ulong Rip, Rflags;
}

[KvmStruct("kvm_segment")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmSegment
{
    public ulong Base;
    public uint Limit;
    public ushort Selector;
    public byte Type, Present, Dpl, Db, S, L, G, Avl, Unusable, Padding;
}

[KvmStruct("kvm_dtable")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmDtable
{
    public ulong Base;
    public ushort Limit;
    public fixed ushort Padding[3];
}

[KvmStruct("kvm_sregs")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmSregs
{
    public KvmSegment Cs, Ds, Es, Fs, Gs, Ss, Tr, Ldt;
    public KvmDtable Gdt, Idt;
    public ulong Cr0, Cr2, Cr3, Cr4, Cr8, Efer, ApicBase;
    public fixed ulong InterruptBitmap[4];
}

[KvmStruct("kvm_fpu")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmFpu
{
    public fixed byte Fpr[128];
    public ushort Fcw, Fsw;
    public byte Ftwx, Pad1;
    public ushort LastOpcode;
    public ulong LastIp, LastDp;
    public fixed byte Xmm[256];
    public uint Mxcsr, Pad2;
}

/// <summary>The legacy 4 KiB XSAVE area; KVM_GET_XSAVE2 may need more (KVM_CAP_XSAVE2 says how much).</summary>
[KvmStruct("kvm_xsave")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmXsave
{
    public fixed uint Region[1024];
}

[KvmStruct("kvm_xcr")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmXcr
{
    public uint Xcr, Reserved;
    public ulong Value;
}

[KvmStruct("kvm_xcrs")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmXcrs
{
    public uint NrXcrs, Flags;
    public KvmXcrArray Xcrs;
    public fixed ulong Padding[16];
}

[System.Runtime.CompilerServices.InlineArray(16)]
public struct KvmXcrArray
{
    private KvmXcr _element;
}

[KvmStruct("kvm_msr_entry")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrEntry
{
    public uint Index, Reserved;
    public ulong Data;
}

/// <summary>Header of struct kvm_msrs; kvm_msr_entry items follow it.</summary>
[KvmStruct("kvm_msrs")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrs
{
    public uint Nmsrs, Pad;
}

/// <summary>Header of struct kvm_msr_list; u32 indices follow it.</summary>
[KvmStruct("kvm_msr_list")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmMsrList
{
    public uint Nmsrs;
}

[KvmStruct("kvm_cpuid_entry2")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmCpuidEntry2
{
    public uint Function, Index, Flags, Eax, Ebx, Ecx, Edx;
    public fixed uint Padding[3];
}

/// <summary>Header of struct kvm_cpuid2; kvm_cpuid_entry2 items follow it.</summary>
[KvmStruct("kvm_cpuid2")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmCpuid2
{
    public uint Nent, Padding;
}

[KvmStruct("kvm_lapic_state")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmLapicState
{
    public fixed byte Regs[1024];
}

[KvmStruct("kvm_mp_state")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmMpState
{
    public uint MpState;
}

/// <summary>struct kvm_vcpu_events: pending exception, interrupt, NMI, SMI state. Saved and restored whole.</summary>
[KvmStruct("kvm_vcpu_events")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmVcpuEvents
{
    public KvmVcpuEventsException Exception;
    public KvmVcpuEventsInterrupt Interrupt;
    public KvmVcpuEventsNmi Nmi;
    public uint SipiVector;
    public uint Flags;
    public KvmVcpuEventsSmi Smi;
    public byte TripleFault;
    public fixed byte Reserved[26];
    public byte ExceptionHasPayload;
    public ulong ExceptionPayload;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmVcpuEventsException
{
    public byte Injected, Nr, HasErrorCode, Pending;
    public uint ErrorCode;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmVcpuEventsInterrupt
{
    public byte Injected, Nr, Soft, Shadow;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmVcpuEventsNmi
{
    public byte Injected, Pending, Masked, Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct KvmVcpuEventsSmi
{
    public byte Smm, Pending, SmmInsideNmi, LatchedInit;
}

[KvmStruct("kvm_debugregs")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmDebugRegs
{
    public fixed ulong Db[4];
    public ulong Dr6, Dr7, Flags;
    public fixed ulong Reserved[9];
}

[KvmStruct("kvm_userspace_memory_region")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmUserspaceMemoryRegion
{
    public uint Slot, Flags;
    public ulong GuestPhysAddr, MemorySize, UserspaceAddr;
}

[KvmStruct("kvm_dirty_log")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmDirtyLog
{
    public uint Slot, Padding1;
    public ulong DirtyBitmap;
}

[KvmStruct("kvm_clear_dirty_log")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmClearDirtyLog
{
    public uint Slot, NumPages;
    public ulong FirstPage;
    public ulong DirtyBitmap;
}

[KvmStruct("kvm_enable_cap")]
[StructLayout(LayoutKind.Sequential)]
public unsafe struct KvmEnableCap
{
    public uint Cap, Flags;
    public fixed ulong Args[4];
    public fixed byte Pad[64];
}

/// <summary>Header of struct kvm_signal_mask; the kernel sigset (8 bytes on x86-64) follows it.</summary>
[KvmStruct("kvm_signal_mask")]
[StructLayout(LayoutKind.Sequential)]
public struct KvmSignalMask
{
    public uint Len;
}
