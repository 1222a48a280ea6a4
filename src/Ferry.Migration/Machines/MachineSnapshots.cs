using Ferry.Interop;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Snapshot;

namespace Ferry.Migration.Machines;

/// <summary>
/// What a restore did. Eager: <paramref name="PagesLoaded"/> pages read into RAM. Lazy: nothing loaded,
/// <paramref name="PagesMapped"/> pages left to be copied from the file when first touched. Either way
/// <paramref name="PagesChecked"/> pages were checked against their checksums first, in
/// <paramref name="PageCheckMilliseconds"/> (eager: the checks alone, by the busiest loading thread; lazy: the
/// verifying read of the file).
/// </summary>
public sealed record RestoreReport(
    bool Lazy, long PagesLoaded, long BytesRead, long PagesMapped, long BalloonedPages, int StateSections, double Milliseconds,
    long PagesChecked = 0, double PageCheckMilliseconds = 0);

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
    /// balloon's bitmap, vCPU and device state; then runs the guest. Everything in the file is checked before use;
    /// on any fault nothing runs. Eager (the default) reads every present page with parallel positional reads
    /// before the guest runs, checking each against its checksum; <paramref name="lazy"/> checks every present page
    /// (one read of the file) and then maps the file copy-on-write, so the guest runs without waiting for its RAM
    /// to be copied and each page is copied when first touched (the file must then stay unchanged while the VM
    /// runs). A bad page fails the restore naming its block and page.
    /// </summary>
    public static RestoreReport Restore(GuestMachine machine, string path, int threads = 0, bool lazy = false)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        using var file = SnapshotFile.Open(path);
        var loaded = lazy
            ? file.MapInto(machine.Memory.Blocks, threads > 0 ? threads : DefaultThreads)
            : file.LoadInto(machine.Memory.Blocks, threads > 0 ? threads : DefaultThreads);
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
        var mapped = lazy ? file.Blocks.Sum(b => (long)b.PresentPages) : 0;
        return new RestoreReport(lazy, loaded.PagesLoaded, loaded.BytesRead, mapped, ballooned, loaded.State.Count, clock.Elapsed.TotalMilliseconds,
            loaded.PagesChecked, loaded.PageCheckMilliseconds);
    }
}
