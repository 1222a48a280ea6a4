using System.Buffers.Binary;
using System.Text;
using Ferry.Interop.Kvm;
using Ferry.Kvm;

namespace Ferry.Machine;

/// <summary>
/// Writes what the guest finds at entry (boot-info page, GDT, identity page tables, the image) and sets each
/// vCPU's entry state: 64-bit mode at CPL3 with IOPL=3, as docs/guest-abi.md specifies.
/// </summary>
public static class BootSetup
{
    public const uint BootInfoMagic = 0x59524546; // "FERY"
    public const uint BootInfoVersion = 1;
    /// <summary>boot_info.flags bit 0: the VMM handles the idle hint on port 0xF5 (<see cref="IdlePort"/>).</summary>
    public const ulong BootFlagIdlePort = 1;
    public const int MaxCommandLine = 3071;

    private const ulong PteFlags = 0x27;        // present | writable | user | accessed
    private const ulong PdeLargeFlags = 0xE7;   // present | writable | user | accessed | dirty | 2 MiB page
    private const ulong PdeUncached = 0x18;     // PWT | PCD, for the MMIO window
    public const ushort CodeSelector = 0x1B;    // GDT index 3, RPL 3
    public const ushort DataSelector = 0x23;    // GDT index 4, RPL 3

    public sealed record Device(ulong Base, ulong Size, uint Kind);

    public static void LoadImage(GuestMemory memory, ElfImage image)
    {
        foreach (var segment in image.Segments)
        {
            // The .bss part (memory size beyond file size) is left alone: fresh guest RAM reads as zero, and
            // writing zeros would allocate host memory for pages the guest may never use.
            if (segment.FileSize > 0)
                memory.Write(segment.PhysicalAddress, image.File.AsSpan((int)segment.FileOffset, (int)segment.FileSize));
        }
    }

    public static void WriteBootInfo(GuestMemory memory, int cpus, ulong tscKhz, string commandLine, IReadOnlyList<Device> devices)
    {
        var cmdline = Encoding.UTF8.GetBytes(commandLine);
        if (cmdline.Length > MaxCommandLine)
            throw new ArgumentException($"guest command line is {cmdline.Length} bytes; at most {MaxCommandLine} fit", nameof(commandLine));
        Span<byte> page = stackalloc byte[4096];
        page.Clear();
        var ranges = new List<(ulong Base, ulong Size, uint Type)> { (0, GuestLayout.ImageAddress, 2) };
        foreach (var block in memory.Blocks)
        {
            var start = Math.Max(block.GuestPhysicalAddress, GuestLayout.ImageAddress);
            ranges.Add((start, block.EndAddress - start, 1));
        }
        BinaryPrimitives.WriteUInt32LittleEndian(page, BootInfoMagic);
        BinaryPrimitives.WriteUInt32LittleEndian(page[4..], BootInfoVersion);
        BinaryPrimitives.WriteUInt32LittleEndian(page[8..], (uint)cpus);
        BinaryPrimitives.WriteUInt32LittleEndian(page[12..], (uint)ranges.Count);
        BinaryPrimitives.WriteUInt64LittleEndian(page[16..], tscKhz);
        BinaryPrimitives.WriteUInt64LittleEndian(page[24..], memory.TotalBytes);
        BinaryPrimitives.WriteUInt32LittleEndian(page[32..], (uint)devices.Count);
        BinaryPrimitives.WriteUInt32LittleEndian(page[36..], (uint)cmdline.Length);
        BinaryPrimitives.WriteUInt64LittleEndian(page[40..], BootFlagIdlePort);
        for (var i = 0; i < ranges.Count; i++)
        {
            var entry = page.Slice(48 + i * 24, 24);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, ranges[i].Base);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], ranges[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], ranges[i].Type);
        }
        for (var i = 0; i < devices.Count && i < 16; i++)
        {
            var entry = page.Slice(240 + i * 24, 24);
            BinaryPrimitives.WriteUInt64LittleEndian(entry, devices[i].Base);
            BinaryPrimitives.WriteUInt64LittleEndian(entry[8..], devices[i].Size);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[16..], devices[i].Kind);
        }
        cmdline.CopyTo(page[1024..]);
        memory.Write(GuestLayout.BootInfoAddress, page);
    }

    public static void WriteGdt(GuestMemory memory)
    {
        Span<ulong> gdt =
        [
            0,
            0x00AF_9A00_0000_FFFF, // 0x08: 64-bit code, DPL0 (unused by the guest; keeps the table conventional)
            0x00CF_9200_0000_FFFF, // 0x10: data, DPL0
            0x00AF_FA00_0000_FFFF, // 0x18: 64-bit code, DPL3
            0x00CF_F200_0000_FFFF, // 0x20: data, DPL3
        ];
        memory.Write(GuestLayout.GdtAddress, System.Runtime.InteropServices.MemoryMarshal.AsBytes(gdt));
    }

    /// <summary>Identity-maps [0, IdentityMapEnd) with 2 MiB pages, user-accessible, A and D preset.</summary>
    public static void WritePageTables(GuestMemory memory, ulong memoryBytes)
    {
        var end = GuestLayout.IdentityMapEnd(memoryBytes);
        var directories = (int)(end / GuestLayout.GiB);
        var pml4 = GuestLayout.PageTablesAddress;
        var pdpt = pml4 + 0x1000;
        var firstPd = pdpt + 0x1000;
        if (firstPd + (ulong)directories * 0x1000 > GuestLayout.PageTablesEnd)
            throw new ArgumentOutOfRangeException(nameof(memoryBytes), "the identity map does not fit below 1 MiB");
        memory.Write(pml4, pdpt | PteFlags);
        var pd = new ulong[512];
        for (var d = 0; d < directories; d++)
        {
            var pdAddress = firstPd + (ulong)d * 0x1000;
            memory.Write(pdpt + (ulong)d * 8, pdAddress | PteFlags);
            for (var e = 0; e < 512; e++)
            {
                var address = (ulong)d * GuestLayout.GiB + (ulong)e * 2 * GuestLayout.MiB;
                var mmio = address >= GuestLayout.MmioWindowStart && address < GuestLayout.MmioWindowEnd;
                pd[e] = address | PdeLargeFlags | (mmio ? PdeUncached : 0);
            }
            memory.Write(pdAddress, System.Runtime.InteropServices.MemoryMarshal.AsBytes(pd.AsSpan()));
        }
    }

    /// <summary>CPUID as the host's KVM supports it, with this vCPU's APIC ID.</summary>
    public static KvmCpuidEntry2[] CpuidFor(KvmCpuidEntry2[] supported, int index, int cpus)
    {
        var entries = (KvmCpuidEntry2[])supported.Clone();
        for (var i = 0; i < entries.Length; i++)
        {
            ref var e = ref entries[i];
            if (e.Function == 1)
            {
                e.Ebx = (e.Ebx & 0x0000_FFFF) | ((uint)index << 24) | ((uint)Math.Min(255, NextPowerOfTwo(cpus)) << 16);
                e.Ecx |= 1u << 31; // hypervisor present
            }
            else if (e.Function is 0xB or 0x1F)
            {
                e.Edx = (uint)index;
            }
        }
        return entries;
    }

    private static int NextPowerOfTwo(int n) => n <= 1 ? 1 : 1 << (32 - System.Numerics.BitOperations.LeadingZeroCount((uint)(n - 1)));

    /// <summary>The entry state of docs/guest-abi.md: long mode, CPL3, IOPL=3, RDI = boot info, RSI = index.</summary>
    public static void SetEntryState(Vcpu vcpu, ulong entry)
    {
        var sregs = vcpu.GetSregs();
        sregs.Cs = Segment(CodeSelector, type: 0xB, longMode: true);
        sregs.Ds = sregs.Es = sregs.Fs = sregs.Gs = sregs.Ss = Segment(DataSelector, type: 0x3, longMode: false);
        sregs.Gdt = new KvmDtable { Base = GuestLayout.GdtAddress, Limit = 5 * 8 - 1 };
        sregs.Idt = new KvmDtable { Base = 0, Limit = 0 };
        sregs.Cr0 = 0x8005_0033;  // PG | AM | WP | NE | ET | MP | PE
        sregs.Cr3 = GuestLayout.PageTablesAddress;
        sregs.Cr4 = 0x620;        // OSXMMEXCPT | OSFXSR | PAE
        sregs.Efer = 0x500;       // LMA | LME
        vcpu.SetSregs(sregs);
        vcpu.SetRegs(new KvmRegs
        {
            Rip = entry,
            Rflags = 0x3002,      // IOPL=3, reserved bit 1; interrupts off
            Rdi = GuestLayout.BootInfoAddress,
            Rsi = (ulong)vcpu.Index,
        });
    }

    private static KvmSegment Segment(ushort selector, byte type, bool longMode) => new()
    {
        Base = 0,
        Limit = 0xFFFF_FFFF,
        Selector = selector,
        Type = type,
        Present = 1,
        Dpl = 3,
        Db = longMode ? (byte)0 : (byte)1,
        S = 1,
        L = longMode ? (byte)1 : (byte)0,
        G = 1,
    };
}
