using Ferry.Kvm;
using Ferry.Migration.Engine;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// RAM blocks a test filled by hand as a paused VM for the engine: nothing writes them while it runs, the state is
/// given, and an optional balloon holds fixed bitmaps. Saving it through <see cref="PrecopyMigration"/> into a
/// <see cref="Snapshot.SnapshotOutput"/> is how the snapshot tests write their files.
/// </summary>
public sealed class PausedBlocks(IReadOnlyList<RamBlock> blocks, IReadOnlyList<StateSection> state, FixedBalloon? balloon = null) : IMigrationSource
{
    public IReadOnlyList<RamBlock> Blocks => blocks;

    public bool IsPaused => true;

    public IMigrationBalloon? Balloon => balloon;

    public void SetDirtyLogging(bool enabled) { }

    /// <summary>Nothing runs, so nothing is ever dirty.</summary>
    public void SyncDirtyLog(int block, PageSet into) { }

    public void PauseGuest() { }

    public void ResumeGuest() { }

    public void SetThrottle(int percent) { }

    public IReadOnlyList<StateSection> SaveState() => state;
}

/// <summary>A trusted balloon (MUST_TELL_HOST, no hinting) whose bitmaps a test sets.</summary>
public sealed class FixedBalloon(IReadOnlyList<RamBlock> blocks) : IMigrationBalloon
{
    private readonly PageSet[] _bitmaps = [.. blocks.Select(b => new PageSet(b.PageCount))];

    public PageSet Bitmap(int block) => _bitmaps[block];

    public bool DriverReady => true;
    public bool MustTellHost => true;
    public bool CanHint => false;
    public uint PoisonValue => 0;
    public bool HintRunFinishedByGuest => true;

    public event Action<int, ulong, ulong>? Hinted { add { } remove { } }

    public void CopyBalloonBitmap(int block, PageSet into) => into.CopyFrom(_bitmaps[block]);

    public void StartHinting() { }

    public void StopHinting() { }

    public void FinishHinting() { }
}
