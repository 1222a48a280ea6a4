namespace Ferry.Kvm;

/// <summary>What a RAM block is created on (`--memory-backend`).</summary>
public enum RamBackend
{
    /// <summary>A memfd mapped shared: holes say where data is; 4 KiB shmem pages (shmem THP is off on these hosts).</summary>
    Memfd,

    /// <summary>Private anonymous memory aligned to 2 MiB with MADV_HUGEPAGE (as QEMU): huge guest mappings.</summary>
    Anonymous,
}
