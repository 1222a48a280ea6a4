using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Snapshot;

namespace Ferry.Migration.Machines;

/// <summary>How a snapshot's RAM is brought back (`ferry run --restore FILE [--lazy[=map]]`).</summary>
public enum RestoreMode
{
    /// <summary>Every present page read (and checked) before the guest runs.</summary>
    Eager,

    /// <summary>
    /// The guest runs at once; each block is demand-paged from the file through userfaultfd (a page touched first is
    /// read and checked then, the rest by a background fill): <see cref="SnapshotFile.PageInto"/>. The default of --lazy.
    /// </summary>
    Lazy,

    /// <summary>
    /// The guest runs after one verifying read of the file, which is then mapped copy-on-write
    /// (<see cref="SnapshotFile.MapInto"/>): pages are read by the kernel at 4 KiB granularity when first touched,
    /// and a file that shrinks under the mapping faults the process. Kept as an alternative until measured under KVM.
    /// </summary>
    LazyMap,
}

/// <summary>
/// What a restore did. Eager: <paramref name="PagesLoaded"/> pages read into RAM. Lazy: nothing loaded yet,
/// <paramref name="PagesMapped"/> pages owed by the file (read when first touched, the rest by the background fill:
/// <paramref name="Paging"/>; for <see cref="RestoreMode.LazyMap"/>, copied from the mapping when first touched).
/// <paramref name="PagesChecked"/> pages were checked against their checksums before the guest ran, in
/// <paramref name="PageCheckMilliseconds"/> (eager: the checks alone, by the busiest loading thread; lazy map: the
/// verifying read of the file; lazy: none yet, each page is checked as it is paged in).
/// </summary>
public sealed record RestoreReport(
    RestoreMode Mode, long PagesLoaded, long BytesRead, long PagesMapped, long BalloonedPages, int StateSections, double Milliseconds,
    long PagesChecked = 0, double PageCheckMilliseconds = 0, LazyRestore? Paging = null)
{
    public bool Lazy => Mode != RestoreMode.Eager;
}

/// <summary>
/// A lazy restore still paging in (<see cref="RestoreMode.Lazy"/>): the pagers of every block, their combined figures,
/// and a task that completes when the whole file is in place (faults with the first pager's failure).
/// </summary>
public sealed class LazyRestore
{
    private readonly DemandPager[] _pagers;
    private readonly long _started;

    internal LazyRestore(IEnumerable<DemandPager> pagers, long startedTimestamp)
    {
        _pagers = [.. pagers];
        _started = startedTimestamp;
        Completion = Task.WhenAll(_pagers.Select(p => p.Completion));
    }

    public IReadOnlyList<DemandPager> Pagers => _pagers;

    /// <summary>Completes when every block's pages are in place; faults when a block's source failed.</summary>
    public Task Completion { get; }

    /// <summary>All blocks' figures as one (<see cref="DemandPagingStatistics.Sum"/>).</summary>
    public DemandPagingStatistics Statistics() => DemandPagingStatistics.Sum([.. _pagers.Select(p => p.Statistics())]);

    /// <summary>From the start of the restore to now (or to completion, once complete: see <see cref="MillisecondsToComplete"/>).</summary>
    public double MillisecondsSinceStart => System.Diagnostics.Stopwatch.GetElapsedTime(_started).TotalMilliseconds;

    /// <summary>From the start of the restore until every page was in place (set when <see cref="Completion"/> succeeds).</summary>
    public double? MillisecondsToComplete { get; internal set; }
}

/// <summary>
/// Snapshots of a machine to a fixed-offset file (docs/snapshot-format.md) and restores from one. Saving is the
/// precopy engine with the file as its output: a running guest keeps running while its pages are written (a page
/// dirtied again overwrites its own slot), then it pauses for the last pass and its state, and runs on afterwards.
/// A paused guest is saved in one pass and stays paused.
/// </summary>
public static class MachineSnapshots
{
    /// <summary>Parallel writers/readers: one per core, at most 8 (the disk, not the CPU, is the limit after that).</summary>
    public static int DefaultThreads => Math.Clamp(Environment.ProcessorCount, 1, 8);

    /// <summary>The engine for a save of <paramref name="machine"/>; the caller runs it with <see cref="Output"/>.</summary>
    public static PrecopyMigration CreateSave(GuestMachine machine, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null) =>
        CreateSave(new MachineMigrationSource(machine), parameters, capabilities);

    /// <summary>The engine for a save of any source (one sending thread per writer of <see cref="Output"/>).</summary>
    public static PrecopyMigration CreateSave(IMigrationSource source, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null) =>
        new(source, (parameters ?? new MigrationParameters()) with { MultifdChannels = DefaultThreads }, capabilities ?? new MigrationCapabilities());

    /// <summary>
    /// The file is written as PATH.partial and renamed over PATH only when complete (see <see cref="Commit"/>).
    /// <paramref name="sourceRunsOn"/>: a snapshot (the guest runs on once its state is in the file); false for a
    /// migration into the file (QMP migrate file:), after which the guest stays paused.
    /// </summary>
    public static SnapshotOutput Output(string path, bool sourceRunsOn = true) => new(PartialPath(path), DefaultThreads, sourceRunsOn);

    public static string PartialPath(string path) => path + ".partial";

    /// <summary>
    /// After a completed save: the finished file replaces PATH, so a failed or cancelled save never destroys the
    /// previous snapshot there; after a failed one the partial file is removed (no leftovers).
    /// </summary>
    public static void Commit(string path, bool completed)
    {
        if (completed)
        {
            File.Move(PartialPath(path), path, overwrite: true);
            // The file was synced before its completion mark; the rename lives in the directory, which needs its own
            // sync, or a crash now could leave the old snapshot (or none) under the name after success was reported.
            DirectorySync.Sync(Path.GetDirectoryName(Path.GetFullPath(path))!);
        }
        else
            File.Delete(PartialPath(path));
    }

    /// <summary>Saves the machine into <paramref name="path"/> and leaves it running if it was running.</summary>
    public static MigrationStats Save(GuestMachine machine, string path, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null)
    {
        using var save = CreateSave(machine, parameters, capabilities);
        return Save(save, path);
    }

    /// <summary>
    /// Runs a save engine (of any source) into PATH.partial and commits it: renamed over PATH when complete, removed
    /// when it failed, so an older snapshot at PATH is never touched by a failure (a full disk included).
    /// </summary>
    public static MigrationStats Save(PrecopyMigration save, string path)
    {
        // The engine resumes a guest that was running as soon as its state is in the file (SnapshotOutput.SourceRunsOn).
        MigrationStats stats;
        using (var output = Output(path))
        {
            try
            {
                stats = save.Run(output);
            }
            catch (MigrationException)
            {
                output.Dispose();
                Commit(path, completed: false);
                throw;
            }
        }
        Commit(path, completed: true);
        return stats;
    }

    /// <summary>
    /// Loads a snapshot into a machine created with the same configuration and started paused: pages, the
    /// balloon's bitmap, vCPU and device state; then runs the guest. Everything in the file but the pages is checked
    /// before use; on any fault nothing runs. <see cref="RestoreMode.Eager"/> (the default) reads every present page
    /// with parallel positional reads before the guest runs, checking each against its checksum (a bad page fails the
    /// restore naming its block and page). <see cref="RestoreMode.Lazy"/> runs the guest at once and pages RAM in from
    /// the file (each page checked before the guest can see it; <see cref="RestoreReport.Paging"/> follows it): a bad
    /// page, a read error or a file that shrinks later stops the machine with <see cref="MachineExitKind.MemoryFault"/>
    /// and a message naming the block and page, instead of giving the guest wrong or zero memory.
    /// <see cref="RestoreMode.LazyMap"/> checks every page (one read of the file) and maps the file copy-on-write (the
    /// file must then stay unchanged while the VM runs).
    /// </summary>
    public static RestoreReport Restore(GuestMachine machine, string path, int threads = 0, RestoreMode mode = RestoreMode.Eager)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var started = System.Diagnostics.Stopwatch.GetTimestamp();
        using var file = SnapshotFile.Open(path);
        var loaded = mode switch
        {
            RestoreMode.Lazy => file.PageInto(machine.Memory.Blocks),
            RestoreMode.LazyMap => file.MapInto(machine.Memory.Blocks, threads > 0 ? threads : DefaultThreads),
            _ => file.LoadInto(machine.Memory.Blocks, threads > 0 ? threads : DefaultThreads),
        };
        LazyRestore? paging = null;
        if (mode == RestoreMode.Lazy)
        {
            paging = new LazyRestore(machine.Memory.Blocks.Select(b => b.Pager!), started);
            // A page that cannot be brought in stops the guest at once (its vCPUs waiting on it are taken out by the
            // stop's kick): it must not run on without the memory it was promised, nor wait for the other blocks.
            foreach (var pager in paging.Pagers)
            {
                pager.Completion.ContinueWith(t =>
                {
                    if (t.IsFaulted)
                        machine.StopOnMemoryFault($"lazy restore of {path} failed: {t.Exception!.InnerExceptions[0].Message}");
                }, TaskScheduler.Default);
            }
            paging.Completion.ContinueWith(t =>
            {
                if (t.IsCompletedSuccessfully)
                    paging.MillisecondsToComplete = paging.MillisecondsSinceStart;
            }, TaskScheduler.Default);
        }
        long ballooned = 0;
        foreach (var block in file.Blocks)
        {
            if (block.BalloonedPages == 0)
                continue;
            if (machine.Balloon is null)
                throw new InvalidDataException($"the snapshot has {block.BalloonedPages} ballooned pages in '{block.Name}' but this machine has no balloon");
            machine.Balloon.ApplyBalloonBitmap(machine.Memory.FindBlock(block.Name)!, 0, block.BalloonBitmap);
            ballooned += (long)block.BalloonedPages;
        }
        MachineState.Restore(machine, loaded.State);
        machine.Resume();
        var mapped = mode != RestoreMode.Eager ? file.Blocks.Sum(b => (long)b.PresentPages) : 0;
        return new RestoreReport(mode, loaded.PagesLoaded, loaded.BytesRead, mapped, ballooned, loaded.State.Count, clock.Elapsed.TotalMilliseconds,
            loaded.PagesChecked, loaded.PageCheckMilliseconds, paging);
    }
}
