namespace Ferry.Kvm;

/// <summary>Where a demand-paged block is.</summary>
public enum DemandPagingState
{
    /// <summary>Pages are owed: faults are resolved from the source and (with the fill) the rest is coming in.</summary>
    Paging,

    /// <summary>Every owed page is in place; the range is unregistered and the block behaves as its plain backing.</summary>
    Complete,

    /// <summary>The source failed: no further page is placed and threads touching a missing page wait (see docs/snapshots.md).</summary>
    Failed,

    /// <summary>Stopped before completing (the block is being disposed).</summary>
    Stopped,
}

/// <summary>What to do besides resolving faults.</summary>
public sealed record DemandPagingOptions
{
    /// <summary>
    /// Bring the rest in on a background thread, 2 MiB piece by piece in order (a lazy restore). Must be off for an
    /// <see cref="IPushedPageSource"/> (postcopy's background stream places the owed pages, <see cref="DemandPager.Place"/>).
    /// </summary>
    public bool BackgroundFill { get; init; } = true;

    /// <summary>
    /// Pages already in place in the block (kept as they are, never fetched); null: the block is emptied first and
    /// every page is owed (a restore). What postcopy's destination holds from its precopy passes.
    /// </summary>
    public PageSet? Present { get; init; }

    /// <summary>
    /// Make every complete 2 MiB piece one huge page (zero pages of a piece with data are copied in too, then
    /// MADV_COLLAPSE). Null: when the block is anonymous memory (transparent huge pages), not for a memfd.
    /// </summary>
    public bool? HugePages { get; init; }
}

/// <summary>
/// A demand-paged block's figures. Faults: page-fault messages handled; a fault's latency runs from the handler
/// reading it to its page being in place (the time the faulting thread spent queued before the read is not
/// included; with one handler thread it is short unless faults pile up). Pages by how they arrived: fetched from
/// the source by faults or by the fill, written by the VMM, and resolved locally as zero without asking the source
/// (by class: absent from the source, ballooned, discarded since paging began). For pushed pages
/// (<see cref="IPushedPageSource"/>): source reads are the faults reported to it, and the pages placed as they
/// arrived are counted as written.
/// </summary>
public sealed record DemandPagingStatistics(
    string Block,
    DemandPagingState State,
    string? Error,
    long Faults,
    long FaultsOnPagesInFlight,
    long FaultsLeftWaiting,
    long PagesFetchedByFaults,
    long PagesFetchedByFill,
    long PagesWritten,
    long ZeroPagesByFaults,
    long ZeroPagesByFill,
    long BalloonedPagesResolved,
    long DiscardedPagesResolved,
    long SourceReads,
    long SourcePages,
    long PiecesFilled,
    long PiecesAlreadyResolved,
    long PiecesLeftEmpty,
    long PiecesCollapsed,
    long CollapseFailures,
    long PiecesMoved,
    long MoveFailures,
    double FaultLatencyP50Us,
    double FaultLatencyP99Us,
    double FaultLatencyMaxUs,
    double BlockedMs,
    double FillMs,
    double FillMiBPerSecond)
{
    /// <summary>Pages resolved as zero without asking the source, every class.</summary>
    public long PagesResolvedLocally => ZeroPagesByFaults + ZeroPagesByFill + BalloonedPagesResolved + DiscardedPagesResolved;

    /// <summary>
    /// Pieces that are one huge page again: every complete piece goes through MADV_COLLAPSE, which makes one of 4 KiB
    /// pages (copied in) and only confirms one moved in whole (<see cref="PiecesMoved"/>, UFFDIO_MOVE).
    /// </summary>
    public long PiecesMadeHuge => PiecesCollapsed;

    /// <summary>Pages brought from the source.</summary>
    public long PagesFetched => PagesFetchedByFaults + PagesFetchedByFill;

    /// <summary>The figures of several blocks as one (latency percentiles: the worst block's; times: the longest).</summary>
    public static DemandPagingStatistics Sum(IReadOnlyList<DemandPagingStatistics> all) => new(
        string.Join("+", all.Select(s => s.Block)),
        all.Any(s => s.State == DemandPagingState.Failed) ? DemandPagingState.Failed
            : all.All(s => s.State == DemandPagingState.Complete) ? DemandPagingState.Complete
            : all.Any(s => s.State == DemandPagingState.Paging) ? DemandPagingState.Paging : DemandPagingState.Stopped,
        all.Select(s => s.Error).FirstOrDefault(e => e is not null),
        all.Sum(s => s.Faults), all.Sum(s => s.FaultsOnPagesInFlight), all.Sum(s => s.FaultsLeftWaiting),
        all.Sum(s => s.PagesFetchedByFaults), all.Sum(s => s.PagesFetchedByFill), all.Sum(s => s.PagesWritten),
        all.Sum(s => s.ZeroPagesByFaults), all.Sum(s => s.ZeroPagesByFill), all.Sum(s => s.BalloonedPagesResolved), all.Sum(s => s.DiscardedPagesResolved),
        all.Sum(s => s.SourceReads), all.Sum(s => s.SourcePages),
        all.Sum(s => s.PiecesFilled), all.Sum(s => s.PiecesAlreadyResolved), all.Sum(s => s.PiecesLeftEmpty), all.Sum(s => s.PiecesCollapsed), all.Sum(s => s.CollapseFailures),
        all.Sum(s => s.PiecesMoved), all.Sum(s => s.MoveFailures),
        all.Select(s => s.FaultLatencyP50Us).DefaultIfEmpty(0).Max(), all.Select(s => s.FaultLatencyP99Us).DefaultIfEmpty(0).Max(),
        all.Select(s => s.FaultLatencyMaxUs).DefaultIfEmpty(0).Max(), all.Sum(s => s.BlockedMs),
        all.Select(s => s.FillMs).DefaultIfEmpty(0).Max(),
        all.Sum(s => s.FillMs) > 0 ? all.Sum(s => (s.PagesFetchedByFill * (double)Page.Size) / (1 << 20)) / (all.Select(s => s.FillMs).Max() / 1000) : 0);
}

/// <summary>A demand-paged block cannot bring a page in: the message names the block and the page.</summary>
public sealed class DemandPagingException : Exception
{
    public DemandPagingException(string message, string block, ulong page, Exception inner) : base(message, inner)
    {
        Block = block;
        Page = page;
    }

    public DemandPagingException() { }

    public DemandPagingException(string message) : base(message) { }

    public DemandPagingException(string message, Exception inner) : base(message, inner) { }

    public string Block { get; } = "";

    public ulong Page { get; }
}
