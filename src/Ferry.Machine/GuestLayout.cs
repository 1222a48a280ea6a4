namespace Ferry.Machine;

/// <summary>
/// The guest-physical layout, in one place (documented in docs/guest-abi.md). RAM is split into named blocks
/// around the 3-4 GiB MMIO window; the low 1 MiB holds the VMM's boot structures.
/// </summary>
public static class GuestLayout
{
    public const ulong KiB = 1024, MiB = 1024 * KiB, GiB = 1024 * MiB;

    public const ulong BootInfoAddress = 0x1000;
    public const ulong GdtAddress = 0x2000;
    public const ulong PageTablesAddress = 0x1_0000;
    public const ulong PageTablesEnd = 0x10_0000;
    /// <summary>Start of the guest image and end of the region the VMM reserves.</summary>
    public const ulong ImageAddress = 0x10_0000;

    public const ulong LowRamLimit = 3 * GiB;
    public const ulong MmioWindowStart = 3 * GiB;
    public const ulong MmioWindowEnd = 4 * GiB;
    public const ulong HighRamStart = 4 * GiB;
    public const ulong VirtioMmioBase = 0xD000_0000;
    public const ulong VirtioMmioSlotSize = 0x1000;

    public const ulong MemoryGranule = 2 * MiB;
    public const ulong MinimumMemory = 32 * MiB;
    /// <summary>Bounded by the page directories that fit below 1 MiB (238 GiB of address space) and the guest's pfn width.</summary>
    public const ulong MaximumMemory = 128 * GiB;
    public const int MaximumCpus = 64;

    public const string LowBlockName = "ram-low";
    public const string HighBlockName = "ram-high";

    /// <summary>The RAM blocks for a memory size: (name, guest-physical address, size).</summary>
    public static IReadOnlyList<(string Name, ulong Address, ulong Size)> RamBlocks(ulong memory)
    {
        var low = Math.Min(memory, LowRamLimit);
        var blocks = new List<(string, ulong, ulong)> { (LowBlockName, 0, low) };
        if (memory > low)
            blocks.Add((HighBlockName, HighRamStart, memory - low));
        return blocks;
    }

    /// <summary>Top of the identity map: all RAM and the MMIO window, rounded up to 1 GiB.</summary>
    public static ulong IdentityMapEnd(ulong memory)
    {
        var top = Math.Max(MmioWindowEnd, RamBlocks(memory)[^1].Address + RamBlocks(memory)[^1].Size);
        return (top + GiB - 1) / GiB * GiB;
    }
}
