using Ferry.Kvm;

namespace Ferry.Migration.Engine;

/// <summary>
/// A thread (a vCPU, or a VMM thread) touched an owed page that is not in place and is blocked on it.
/// <paramref name="Timestamp"/> is when it blocked (a <see cref="System.Diagnostics.Stopwatch"/> timestamp);
/// <paramref name="Vcpu"/> the vCPU index, or -1 when it is not a vCPU or the memory cannot tell.
/// </summary>
public readonly record struct PostcopyFault(int Block, ulong Page, long Timestamp, int Vcpu);

/// <summary>
/// The destination's guest memory as postcopy sees it: the seam between the migration engine (which knows what is
/// owed and where to get it) and the memory layer (which makes a thread wait on a page that is not there and wakes
/// it when it is). With userfaultfd: the owed pages are registered MISSING, <see cref="Place"/> is UFFDIO_COPY (which
/// also wakes the faulting threads), <see cref="PlaceZero"/> UFFDIO_ZEROPAGE, and the fault messages feed
/// <see cref="TryTakeFault"/>. The engine's tests implement it over plain memory with host threads that wait.
/// <para>
/// Contract. <see cref="MarkOwed"/> is called once per block at the switch, before the guest resumes; from then on a
/// page in the owed set reads as missing until placed, and every other page keeps what the block holds (a page never
/// written reads zero): touching it never reaches the engine. The engine calls <see cref="Place"/> or
/// <see cref="PlaceZero"/> at most once per owed page, for owed pages only, from several threads at once (different
/// pages); a placement is atomic per page: a thread sees the whole page or waits. Faults are reported at least once
/// per blocked thread and page (a duplicate report is harmless); nothing is reported for pages not owed or placed.
/// <see cref="Complete"/> comes once every owed page was placed.
/// </para>
/// </summary>
public interface IPostcopyMemory
{
    /// <summary>How many vCPUs the guest has (their indices are 0..n-1 in <see cref="PostcopyFault.Vcpu"/>), for blocktime.</summary>
    int VcpuCount { get; }

    /// <summary>
    /// (a) From now on the pages of <paramref name="owed"/> in block <paramref name="block"/> (stream block order =
    /// the target's block order) are missing until placed: whatever the block held for them is dropped.
    /// </summary>
    void MarkOwed(int block, PageSet owed);

    /// <summary>(b) Places whole pages from <paramref name="pages"/> (a multiple of 4 KiB) at once and wakes the threads waiting on them.</summary>
    void Place(int block, ulong firstPage, ReadOnlySpan<byte> pages);

    /// <summary>(b) Places zero pages (the source found them zero) and wakes the threads waiting on them.</summary>
    void PlaceZero(int block, ulong firstPage, ulong count);

    /// <summary>(c) The next fault on an owed page not yet placed, waiting up to <paramref name="timeout"/>; false when none came.</summary>
    bool TryTakeFault(TimeSpan timeout, out PostcopyFault fault);

    /// <summary>Every owed page is in place: demand paging ends (the userfaultfd range is unregistered).</summary>
    void Complete();
}
