using System.Diagnostics;
using Ferry.Kvm;

namespace Ferry.Migration.Engine;

/// <summary>Whether free page hinting drops free pages from the passes, and if not, why.</summary>
public enum FreePageHintReason
{
    On,
    NoBalloon,
    CapabilityOff,

    /// <summary>The guest did not negotiate FREE_PAGE_HINT (or its driver is not ready).</summary>
    NotNegotiated,

    /// <summary>The guest poisons free pages (<see cref="MigrationStats.PoisonValue"/>), so they hold a pattern it checks and must be sent.</summary>
    GuestPoisons,

    /// <summary>The guest is paused: it cannot answer a hint run.</summary>
    GuestPaused,
}

/// <summary>
/// Free page hinting over a migration: a hint run is started after each dirty-log sync while the guest runs, each
/// hint drops its pages from the pass being sent (atomically, so a page a sender already took is not counted), and
/// the run is stopped before every sync, because a hint processed after a sync could clear a bit the sync just set
/// for a page the guest reused. The last run is finished before the switch-over so the guest gets its pages back.
/// </summary>
internal sealed class FreePageHintSession
{
    private readonly IMigrationBalloon _balloon;
    private readonly Func<bool> _guestPaused;
    private readonly MigrationCounters _counters;
    private readonly GuestFreePages? _free;
    private PageSet[] _pending = [];
    private volatile bool _accepting;
    private bool _subscribed;

    private FreePageHintSession(IMigrationBalloon balloon, Func<bool> guestPaused, MigrationCounters counters, GuestFreePages? free)
    {
        _balloon = balloon;
        _guestPaused = guestPaused;
        _counters = counters;
        _free = free;
    }

    /// <summary>Whether hints can be used, and if not, why.</summary>
    public static FreePageHintReason Decide(IMigrationBalloon? balloon, bool capability, bool guestPaused) => (balloon, capability) switch
    {
        (null, _) => FreePageHintReason.NoBalloon,
        (_, false) => FreePageHintReason.CapabilityOff,
        ({ DriverReady: false }, _) or ({ CanHint: false }, _) => FreePageHintReason.NotNegotiated,
        ({ PoisonValue: not 0 }, _) => FreePageHintReason.GuestPoisons,
        _ when guestPaused => FreePageHintReason.GuestPaused,
        _ => FreePageHintReason.On,
    };

    /// <summary>A session when <paramref name="reason"/> is <see cref="FreePageHintReason.On"/>, else null; <paramref name="free"/> (a verified migration) records every hinted page.</summary>
    public static FreePageHintSession? Create(FreePageHintReason reason, IMigrationBalloon? balloon, Func<bool> guestPaused, MigrationCounters counters, GuestFreePages? free = null) =>
        reason == FreePageHintReason.On ? new FreePageHintSession(balloon!, guestPaused, counters, free) : null;

    /// <summary>
    /// Subscribes to hints that clear pages of <paramref name="pending"/>, starts the first run and gives the guest
    /// its budget to hand over its free pages before pass 1 reads them; a guest that never answers costs exactly that.
    /// </summary>
    public void Begin(PageSet[] pending, int budgetMs, CancellationToken cancel)
    {
        _pending = pending;
        _balloon.Hinted += OnHinted;
        _subscribed = true;
        Start();
        var deadline = Stopwatch.GetTimestamp() + (long)(budgetMs / 1000.0 * Stopwatch.Frequency);
        while (!_balloon.HintRunFinishedByGuest && Stopwatch.GetTimestamp() < deadline && !cancel.IsCancellationRequested)
            Thread.Sleep(1);
    }

    /// <summary>Starts a run (after a sync), unless the guest is paused.</summary>
    public void Start()
    {
        if (_guestPaused())
            return;
        _accepting = true;
        _balloon.StartHinting();
    }

    /// <summary>Before every sync (QEMU does the same): once this returns no hint can clear a bit the sync sets.</summary>
    public void Stop()
    {
        _balloon.StopHinting();
        _accepting = false;
    }

    /// <summary>Before the switch-over: the guest may reuse the hinted pages.</summary>
    public void Finish() => _balloon.FinishHinting();

    /// <summary>After the migration, however it ended: no more hints, the run stopped and finished.</summary>
    public void End()
    {
        _accepting = false;
        if (_subscribed)
            _balloon.Hinted -= OnHinted;
        _subscribed = false;
        try
        {
            _balloon.StopHinting();
            _balloon.FinishHinting();
        }
        catch (InvalidOperationException)
        {
            // The driver went away meanwhile; nothing to finish.
        }
    }

    /// <summary>A free page hint (vCPU thread): drop the pages from this pass unless they were already sent.</summary>
    private void OnHinted(int block, ulong offset, ulong length)
    {
        var pending = _pending;
        if (!_accepting || (uint)block >= (uint)pending.Length || length == 0)
            return;
        // Its pages may now differ between the two sides (not sent again, or sent before the guest freed them).
        _free?.Add(block, offset, length);
        var set = pending[block];
        var first = offset / Page.Size;
        var end = Math.Min(Page.PagesFor(offset + length), set.PageCount);
        if (first >= end)
            return;
        var cleared = set.RemoveRange(first, end - first);
        if (cleared != 0)
            _counters.AddHinted((long)cleared);
    }
}
