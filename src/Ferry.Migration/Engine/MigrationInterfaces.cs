using Ferry.Kvm;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Engine;

/// <summary>One piece of non-RAM state: a vCPU, a device, the machine.</summary>
public sealed record StateSection(StateKind Kind, ushort Index, string Name, byte[] Blob);

/// <summary>
/// What the precopy engine needs from a running VM. A real machine adapts to it (MachineMigrationSource); tests use
/// synthetic memory and a synthetic "guest" so the engine runs without KVM.
/// </summary>
public interface IMigrationSource
{
    IReadOnlyList<RamBlock> Blocks { get; }

    /// <summary>Turns dirty logging on (a fresh log) or off.</summary>
    void SetDirtyLogging(bool enabled);

    /// <summary>ORs the pages written since the last sync (KVM's log and the VMM's own writes) into <paramref name="into"/>.</summary>
    void SyncDirtyLog(int block, PageSet into);

    bool IsPaused { get; }

    void PauseGuest();

    void ResumeGuest();

    /// <summary>0 = unthrottled; 1..99 = percent of each time slice the vCPUs sleep.</summary>
    void SetThrottle(int percent);

    /// <summary>The balloon, when the machine has one.</summary>
    IMigrationBalloon? Balloon { get; }

    /// <summary>vCPU and device state; the machine is paused.</summary>
    IReadOnlyList<StateSection> SaveState();

    /// <summary>
    /// Called once at setup, while the guest runs: does ahead whatever the first <see cref="SaveState"/> would
    /// otherwise do inside the downtime (one-time queries, first-call compilation of the state path).
    /// </summary>
    void PrepareSwitchover() { }
}

/// <summary>The balloon as the engine sees it: the bitmap of ballooned pages and the free page hint protocol.</summary>
public interface IMigrationBalloon
{
    bool DriverReady { get; }

    /// <summary>The guest negotiated MUST_TELL_HOST: it never touches a ballooned page before deflating it.</summary>
    bool MustTellHost { get; }

    /// <summary>The guest negotiated FREE_PAGE_HINT.</summary>
    bool CanHint { get; }

    /// <summary>The guest's page poison value (0 = none): non-zero means free pages hold a pattern the guest checks.</summary>
    uint PoisonValue { get; }

    /// <summary>Copies the current balloon bitmap of a block into <paramref name="into"/> (replacing it).</summary>
    void CopyBalloonBitmap(int block, PageSet into);

    /// <summary>Raised for every validated hint (block index, byte offset, length). Never raised after StopHinting returns.</summary>
    event Action<int, ulong, ulong>? Hinted;

    void StartHinting();

    /// <summary>Ends the current run's reporting: no <see cref="Hinted"/> event fires after this returns.</summary>
    void StopHinting();

    /// <summary>Lets the guest reuse the hinted pages.</summary>
    void FinishHinting();

    /// <summary>The guest has reported everything it had in the current run (it sent STOP itself).</summary>
    bool HintRunFinishedByGuest { get; }

    /// <summary>
    /// Raised (block index, byte offset, length) for every range the host discarded on the guest's word (inflated
    /// pages, reported free pages): they read as zero here now, while the destination may still hold what was sent of
    /// them before. A verified migration leaves them out of its comparison until the guest writes them again.
    /// </summary>
    event Action<int, ulong, ulong>? Discarded { add { } remove { } }
}

/// <summary>What the destination needs from the VM it loads into (created, started paused).</summary>
public interface IMigrationTarget
{
    IReadOnlyList<RamBlock> Blocks { get; }

    /// <summary>Replaces the balloon bitmap for the pages a BALLOON_BITMAP record covers (and discards the ballooned ones).</summary>
    void ApplyBalloonBitmap(int block, ulong firstPage, ReadOnlySpan<byte> bitmap);

    /// <summary>Restores vCPU and device state; everything is validated as hostile input (throws InvalidDataException).</summary>
    void RestoreState(IReadOnlyList<StateSection> sections);

    /// <summary>Starts the loaded guest.</summary>
    void ResumeGuest();

    /// <summary>
    /// Called once while pages load (on its own thread, never at the same time as <see cref="RestoreState"/>):
    /// does ahead what the first restore would otherwise do inside the downtime.
    /// </summary>
    void PrepareRestore() { }

    /// <summary>The memory seam for postcopy (null: this destination cannot run a guest before all its memory is here, and declines postcopy).</summary>
    IPostcopyMemory? Postcopy => null;
}
