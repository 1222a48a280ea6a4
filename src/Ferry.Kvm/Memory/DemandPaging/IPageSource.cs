namespace Ferry.Kvm;

/// <summary>
/// Where a demand-paged RAM block's owed pages come from (<see cref="DemandPager"/>): a snapshot file for a lazy
/// restore, the migration source over the return path for postcopy. The pager asks it only for pages in
/// <see cref="DataPages"/>, each once; every other page is zero and resolved locally without asking it.
/// <para>
/// <see cref="ReadPages"/> is called from the pager's fault-handler and fill threads at the same time (for different
/// pages), so it must be thread-safe. It must check what it returns (a checksum per page where the source has one)
/// and throw a <see cref="PageSourceException"/> naming the page rather than return wrong or missing bytes: the pager
/// then fails and no waiting thread is given anything.
/// </para>
/// <para>
/// The pager owns the source once paging has begun: a source that is <see cref="IDisposable"/> is disposed when
/// nothing will read it again (paging complete, or the pager disposed).
/// </para>
/// </summary>
public interface IPageSource
{
    /// <summary>What the source is, for messages (e.g. "snapshot /var/lib/vm.fsnap").</summary>
    string Description { get; }

    /// <summary>Pages of the block the source holds contents for (read-only for the pager).</summary>
    PageSet DataPages { get; }

    /// <summary>
    /// Of the other pages, those the source knows were in the guest's balloon: zero like the rest, but counted apart
    /// and never filled in the background (the guest gave them back). Null when the source has none.
    /// </summary>
    PageSet? BalloonedPages { get; }

    /// <summary>
    /// Reads pages [<paramref name="firstPage"/>, +<paramref name="count"/>), all in <see cref="DataPages"/>, into
    /// <paramref name="into"/> (count × 4096 bytes), checked. Throws <see cref="PageSourceException"/> on any fault.
    /// </summary>
    void ReadPages(ulong firstPage, ulong count, Span<byte> into);
}

/// <summary>
/// A page source that is not read on demand: its pages arrive by themselves and whoever receives them places them
/// (<see cref="DemandPager.Place"/>, <see cref="DemandPager.PlaceZero"/>). Postcopy's destination: the migration
/// source sends the owed pages in the background and in answer to requests. The pager never calls
/// <see cref="IPageSource.ReadPages"/> on it and runs no fill of its own; a fault on one of its data pages not yet in
/// place is reported to <see cref="Faulted"/> (so the receiver can ask for it), and the faulting thread waits until
/// the page is placed. Faults on every other page are resolved by the pager as usual (zero, ballooned, discarded).
/// </summary>
public interface IPushedPageSource : IPageSource
{
    /// <summary>
    /// A thread touched data page <paramref name="page"/>, which has not arrived, and waits for it.
    /// <paramref name="timestamp"/>: when the pager read the fault (a <see cref="System.Diagnostics.Stopwatch"/>
    /// timestamp); <paramref name="threadId"/>: the faulting thread's kernel id (0 when the kernel did not say). Called
    /// on the pager's fault-handler thread: it must return quickly and must not touch the block's memory. A page may
    /// be reported more than once (and just after it was placed); the receiver ignores what it already has.
    /// </summary>
    void Faulted(ulong page, long timestamp, int threadId);
}

/// <summary>A page source could not deliver a page correctly: an I/O error, a short read, a checksum mismatch.</summary>
public sealed class PageSourceException : Exception
{
    public PageSourceException(string message, ulong page) : base(message) => Page = page;

    public PageSourceException(string message, ulong page, Exception inner) : base(message, inner) => Page = page;

    public PageSourceException() { }

    public PageSourceException(string message) : base(message) { }

    public PageSourceException(string message, Exception inner) : base(message, inner) { }

    /// <summary>The (first) page of the block the failure concerns.</summary>
    public ulong Page { get; }
}
