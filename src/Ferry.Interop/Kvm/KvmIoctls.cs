namespace Ferry.Interop.Kvm;

/// <summary>
/// KVM ioctl request numbers, named exactly as the C macros in &lt;linux/kvm.h&gt; so the layout test can
/// check each against the machine's headers. Encoded with the kernel's _IOC rule (<see cref="IoctlNumber"/>) from the struct sizes here.
/// </summary>
public static unsafe class KvmIoctls
{
    private const uint KVMIO = 0xAE;

    private static uint Io(uint nr) => IoctlNumber.Io(KVMIO, nr);
    private static uint Ior(uint nr, int size) => IoctlNumber.Ior(KVMIO, nr, size);
    private static uint Iow(uint nr, int size) => IoctlNumber.Iow(KVMIO, nr, size);
    private static uint Iowr(uint nr, int size) => IoctlNumber.Iowr(KVMIO, nr, size);

    // System ioctls
    public static readonly uint KVM_GET_API_VERSION = Io(0x00);
    public static readonly uint KVM_CREATE_VM = Io(0x01);
    public static readonly uint KVM_GET_MSR_INDEX_LIST = Iowr(0x02, sizeof(KvmMsrList));
    public static readonly uint KVM_CHECK_EXTENSION = Io(0x03);
    public static readonly uint KVM_GET_VCPU_MMAP_SIZE = Io(0x04);
    public static readonly uint KVM_GET_SUPPORTED_CPUID = Iowr(0x05, sizeof(KvmCpuid2));

    // VM ioctls
    public static readonly uint KVM_CREATE_VCPU = Io(0x41);
    public static readonly uint KVM_GET_DIRTY_LOG = Iow(0x42, sizeof(KvmDirtyLog));
    public static readonly uint KVM_SET_USER_MEMORY_REGION = Iow(0x46, sizeof(KvmUserspaceMemoryRegion));
    public static readonly uint KVM_SET_TSS_ADDR = Io(0x47);
    public static readonly uint KVM_ENABLE_CAP = Iow(0xA3, sizeof(KvmEnableCap));
    public static readonly uint KVM_CLEAR_DIRTY_LOG = Iowr(0xC0, sizeof(KvmClearDirtyLog));

    // vCPU ioctls
    public static readonly uint KVM_RUN = Io(0x80);
    public static readonly uint KVM_GET_REGS = Ior(0x81, sizeof(KvmRegs));
    public static readonly uint KVM_SET_REGS = Iow(0x82, sizeof(KvmRegs));
    public static readonly uint KVM_GET_SREGS = Ior(0x83, sizeof(KvmSregs));
    public static readonly uint KVM_SET_SREGS = Iow(0x84, sizeof(KvmSregs));
    public static readonly uint KVM_GET_MSRS = Iowr(0x88, sizeof(KvmMsrs));
    public static readonly uint KVM_SET_MSRS = Iow(0x89, sizeof(KvmMsrs));
    public static readonly uint KVM_SET_SIGNAL_MASK = Iow(0x8B, sizeof(KvmSignalMask));
    public static readonly uint KVM_GET_FPU = Ior(0x8C, sizeof(KvmFpu));
    public static readonly uint KVM_SET_FPU = Iow(0x8D, sizeof(KvmFpu));
    public static readonly uint KVM_GET_LAPIC = Ior(0x8E, sizeof(KvmLapicState));
    public static readonly uint KVM_SET_LAPIC = Iow(0x8F, sizeof(KvmLapicState));
    public static readonly uint KVM_SET_CPUID2 = Iow(0x90, sizeof(KvmCpuid2));
    public static readonly uint KVM_GET_CPUID2 = Iowr(0x91, sizeof(KvmCpuid2));
    public static readonly uint KVM_GET_MP_STATE = Ior(0x98, sizeof(KvmMpState));
    public static readonly uint KVM_SET_MP_STATE = Iow(0x99, sizeof(KvmMpState));
    public static readonly uint KVM_GET_VCPU_EVENTS = Ior(0x9F, sizeof(KvmVcpuEvents));
    public static readonly uint KVM_SET_VCPU_EVENTS = Iow(0xA0, sizeof(KvmVcpuEvents));
    public static readonly uint KVM_GET_DEBUGREGS = Ior(0xA1, sizeof(KvmDebugRegs));
    public static readonly uint KVM_SET_DEBUGREGS = Iow(0xA2, sizeof(KvmDebugRegs));
    public static readonly uint KVM_SET_TSC_KHZ = Io(0xA2);
    public static readonly uint KVM_GET_TSC_KHZ = Io(0xA3);
    public static readonly uint KVM_GET_XSAVE = Ior(0xA4, sizeof(KvmXsave));
    public static readonly uint KVM_SET_XSAVE = Iow(0xA5, sizeof(KvmXsave));
    public static readonly uint KVM_GET_XCRS = Ior(0xA6, sizeof(KvmXcrs));
    public static readonly uint KVM_SET_XCRS = Iow(0xA7, sizeof(KvmXcrs));
}

/// <summary>KVM_EXIT_* reasons (kvm_run.exit_reason), named as in &lt;linux/kvm.h&gt;.</summary>
public static class KvmExitReasons
{
    public const uint KVM_EXIT_UNKNOWN = 0;
    public const uint KVM_EXIT_EXCEPTION = 1;
    public const uint KVM_EXIT_IO = 2;
    public const uint KVM_EXIT_HYPERCALL = 3;
    public const uint KVM_EXIT_DEBUG = 4;
    public const uint KVM_EXIT_HLT = 5;
    public const uint KVM_EXIT_MMIO = 6;
    public const uint KVM_EXIT_IRQ_WINDOW_OPEN = 7;
    public const uint KVM_EXIT_SHUTDOWN = 8;
    public const uint KVM_EXIT_FAIL_ENTRY = 9;
    public const uint KVM_EXIT_INTR = 10;
    public const uint KVM_EXIT_INTERNAL_ERROR = 17;
    public const uint KVM_EXIT_SYSTEM_EVENT = 24;

    public static string Name(uint reason) => reason switch
    {
        KVM_EXIT_UNKNOWN => "UNKNOWN",
        KVM_EXIT_EXCEPTION => "EXCEPTION",
        KVM_EXIT_IO => "IO",
        KVM_EXIT_HYPERCALL => "HYPERCALL",
        KVM_EXIT_DEBUG => "DEBUG",
        KVM_EXIT_HLT => "HLT",
        KVM_EXIT_MMIO => "MMIO",
        KVM_EXIT_IRQ_WINDOW_OPEN => "IRQ_WINDOW_OPEN",
        KVM_EXIT_SHUTDOWN => "SHUTDOWN",
        KVM_EXIT_FAIL_ENTRY => "FAIL_ENTRY",
        KVM_EXIT_INTR => "INTR",
        KVM_EXIT_INTERNAL_ERROR => "INTERNAL_ERROR",
        KVM_EXIT_SYSTEM_EVENT => "SYSTEM_EVENT",
        _ => $"#{reason}",
    };
}

/// <summary>Other constants from &lt;linux/kvm.h&gt; that Ferry uses.</summary>
public static class KvmConstants
{
    public const int KVM_API_VERSION = 12;
    public const uint KVM_MEM_LOG_DIRTY_PAGES = 1;
    public const uint KVM_EXIT_IO_IN = 0;
    public const uint KVM_EXIT_IO_OUT = 1;

    public const int KVM_CAP_IRQCHIP = 0;
    public const int KVM_CAP_USER_MEMORY = 3;
    public const int KVM_CAP_NR_VCPUS = 9;
    public const int KVM_CAP_NR_MEMSLOTS = 10;
    public const int KVM_CAP_MP_STATE = 14;
    public const int KVM_CAP_SET_TSS_ADDR = 4;
    public const int KVM_CAP_EXT_CPUID = 7;
    public const int KVM_CAP_VCPU_EVENTS = 41;
    public const int KVM_CAP_DEBUGREGS = 50;
    public const int KVM_CAP_XSAVE = 55;
    public const int KVM_CAP_XCRS = 56;
    public const int KVM_CAP_TSC_CONTROL = 60;
    public const int KVM_CAP_GET_TSC_KHZ = 61;
    public const int KVM_CAP_MAX_VCPUS = 66;
    public const int KVM_CAP_IMMEDIATE_EXIT = 136;
    public const int KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 = 168;
    public const int KVM_CAP_XSAVE2 = 208;
}

/// <summary>Offsets into struct kvm_run that the exit handlers read. Checked against the headers by a test.</summary>
public static class KvmRunOffsets
{
    public const int immediate_exit = 1;
    public const int exit_reason = 8;
    public const int io_direction = 32;
    public const int io_size = 33;
    public const int io_port = 34;
    public const int io_count = 36;
    public const int io_data_offset = 40;
    public const int mmio_phys_addr = 32;
    public const int mmio_data = 40;
    public const int mmio_len = 48;
    public const int mmio_is_write = 52;
    public const int fail_entry_hardware_entry_failure_reason = 32;
    public const int fail_entry_cpu = 40;
    public const int internal_suberror = 32;
    public const int internal_ndata = 36;
    public const int internal_data = 40;
    public const int system_event_type = 32;
}
