namespace Ferry.Kvm;

/// <summary>
/// What is behind a <see cref="RamBlock"/>'s address range: the operations whose answer depends on where the
/// pages come from. The block owns the range (its <see cref="Ferry.Interop.MappedRegion"/>, registered with KVM)
/// and checks every argument; a backing owns whatever it maps there and is given only page-aligned ranges
/// inside the block. Today: <see cref="MemfdBacking"/> (every block starts on one) and
/// <see cref="FileCopyOnWriteBacking"/> (a lazy restore). A new kind of memory is one more subclass, and nothing
/// above the block changes.
/// <para>
/// "Map" is each backing's factory, not a member: a memfd maps a new range the block then owns
/// (<see cref="MemfdBacking.Map"/>), a copy-on-write file maps over the block's existing range
/// (<see cref="FileCopyOnWriteBacking.Map"/>) so the KVM slot never changes.
/// </para>
/// </summary>
internal abstract class RamBacking : IDisposable
{
    /// <summary>
    /// The byte ranges that hold data, in order and page-granular; everything else reads as zero without being
    /// allocated. Walking these instead of the whole block is how a pass avoids reading (and so allocating)
    /// memory that holds nothing.
    /// </summary>
    public abstract IEnumerable<(ulong Offset, ulong Length)> DataExtents();

    /// <summary>Gives the pages of [offset, offset + length) back to the host: they read as zero afterwards.</summary>
    public abstract void Discard(ulong offset, ulong length);

    /// <summary>Bulk load of bytes at an offset (what a migration destination or a restore does for each page).</summary>
    public abstract void WriteAt(ulong offset, ReadOnlySpan<byte> data);

    /// <summary>
    /// Whether a bulk load may receive straight into the mapping (a read system call copying into it) instead of
    /// going through <see cref="WriteAt"/>: true where a write through the mapping is already the cheapest way in.
    /// </summary>
    public virtual bool LoadsThroughMapping => false;

    /// <summary>Bytes of host memory this backing holds for the block.</summary>
    public abstract ulong AllocatedBytes();

    /// <summary>
    /// The block's range was just mapped over from a file (a lazy restore): give back what this backing holds
    /// outside the range and report nothing allocated from now on (the file backing counts the range's pages).
    /// </summary>
    public abstract void MappedOver();

    /// <summary>
    /// Called before managed code touches [offset, offset + length) through the mapping: a backing whose pages may be
    /// missing-and-owed (demand paging) brings them in from a system call. Nothing to do for the others.
    /// </summary>
    public virtual void EnsureResident(ulong offset, ulong length) { }

    /// <summary>Pages still read through a file (0 unless the backing is a file mapping).</summary>
    public virtual ulong FileMappedPages => 0;

    /// <summary>Discards that zeroed pages instead of giving them back (0 unless a discard can fail to).</summary>
    public virtual long DiscardsZeroFilled => 0;

    public abstract void Dispose();
}
