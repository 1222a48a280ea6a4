using System.Diagnostics;
using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Snapshot;

/// <summary>
/// The snapshot benchmark (issue 6, point 6). In one invocation, per size and profile, repeated: Ferry saving a
/// running 2-vCPU guest into a fixed-offset file (<see cref="MachineSnapshots.Save"/>, live, free page hinting on),
/// a plain sequential write of the same number of bytes into the same directory (the baseline), Ferry's eager and
/// lazy restores (both lazy modes: userfaultfd, `--lazy`, and the copy-on-write mapping, `--lazy=map`; warm: the file
/// still in the page cache; cold: after dropping the page cache), and QEMU saving the same
/// guest image with the same profile to a file with its mapped-ram capability (multifd with as many channels as
/// Ferry has threads), then loading it back (warm and cold). Save figures come from the median run by save time
/// (each side its own); each restore figure is its own median.
/// </summary>
internal static class SnapshotBench
{
    /// <summary>The issue's profiles (the default).</summary>
    public static readonly string[] DefaultProfiles = ["idle-fresh", "fill-free-hint"];

    /// <summary>Also fill-keep: 60% of usable memory filled and kept, so the save has real bytes to write and `verify` real pages to check.</summary>
    public static readonly string[] AllProfiles = [.. DefaultProfiles, "fill-keep"];

    private const double MiB = 1 << 20;
    private const string GuestCommandLine = "report_delay_ms=600000";

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, Converters = { new JsonStringEnumConverter() } };

    /// <summary>What a file occupies: its apparent size and the bytes allocated on disk (st_blocks × 512).</summary>
    internal sealed record FileSize(long ApparentBytes, long AllocatedBytes);

    /// <summary>
    /// One restore: GuestMachine.Create + Start(paused) + Restore (what `ferry run --restore [--lazy]` does before the guest
    /// runs); then the guest's `verify`, which reads every page it wrote (for a lazy restore, that is when they are read).
    /// </summary>
    /// <remarks>
    /// For <see cref="RestoreMode.Lazy"/> (userfaultfd) also: <paramref name="FillMs"/> = from the start of Restore until every page
    /// was in place (the background fill's end), the fault latency percentiles, faults, pages read on fault and by the fill,
    /// pages resolved as zero without reading, and the 2 MiB pieces made huge pages again.
    /// </remarks>
    internal sealed record FerryRestore(bool Cold, RestoreMode Mode, double TotalMs, double CreateStartMs, double RestoreMs, long PagesLoaded, long BytesRead, ulong VerifyPagesChecked, double VerifyMs, double PageCheckMs = 0,
        double? FillMs = null, double? FaultP50Us = null, double? FaultP99Us = null, long? Faults = null, long? PagesByFaults = null, long? PagesByFill = null, long? PagesZero = null, long? PiecesCollapsed = null, double? FillMiBps = null);

    internal sealed record FerryRun(
        ulong GuestUsedBytes, ulong GuestBalloonBytes, ulong GuestTotalBytes, double PrepareMs,
        double SaveWallMs, MigrationStats Stats, FileSize File, long InspectAllocatedBytes, long PresentBytes, long PresentPages,
        double BaselineMs, long BaselineBytes, FerryRestore? Warm, FerryRestore? Cold, FerryRestore? LazyWarm, FerryRestore? LazyCold,
        FerryRestore? UffdWarm = null, FerryRestore? UffdCold = null);

    /// <summary>One QEMU restore: a fresh QEMU with -incoming defer; load = migrate-incoming until status running.</summary>
    internal sealed record QemuRestore(bool Cold, double StartToQmpMs, double LoadMs, double StartToRunningMs, ulong VerifyPagesChecked);

    internal sealed record QemuRun(
        ulong GuestUsedBytes, double SaveWallMs, long TotalTimeMs, double FsyncMs, long DowntimeMs, long SetupTimeMs, ulong TransferredBytes,
        ulong ZeroPages, ulong NormalPages, ulong DirtySyncCount, bool Multifd, int Channels, FileSize File,
        QemuRestore? Warm, QemuRestore? Cold);

    internal sealed record Row(ulong MemoryGib, string Profile, List<FerryRun> Ferry, List<QemuRun> Qemu)
    {
        public FerryRun FerryMedian => Ferry.OrderBy(r => r.Stats.TotalTimeMs).ElementAt(Ferry.Count / 2);

        public QemuRun? QemuMedian => Qemu.Count == 0 ? null : Qemu.OrderBy(r => r.TotalTimeMs + r.FsyncMs).ElementAt(Qemu.Count / 2);
    }

    internal sealed record Report(
        string Command, DateTime StartedUtc, string Host, int Cores, ulong HostRamBytes, string Kernel, string Cpu, string Directory, string FileSystem,
        string? QemuVersion, string QemuStatus, int FerryThreads, string GuestCommandLine, int FerryCpus, bool Cold, bool Paused, int Repeat, List<Row> Rows);

    public static async Task<int> Run(string[] args, ulong[] sizes, string[] profiles, int repeat, string directory, string? jsonPath, bool cold, bool qemuRestore, bool paused, int cpus)
    {
        foreach (var p in profiles)
        {
            if (!AllProfiles.Contains(p))
                throw new ArgumentException($"unknown profile '{p}' ({string.Join(", ", AllProfiles)})");
        }
        if (repeat < 1)
            throw new ArgumentException($"--repeat {repeat} must be at least 1");
        s_cpus = cpus;
        Directory.CreateDirectory(directory);
        if (cold && Environment.UserName != "root")
        {
            Console.WriteLine("not root: cannot drop the page cache, cold restores skipped");
            cold = false;
        }

        var started = DateTime.UtcNow;
        var threads = MachineSnapshots.DefaultThreads;
        var qemuBinary = Ferry.Qemu.QemuGuest.Binary();
        var qemuVersion = qemuBinary is null ? null : Ferry.Qemu.QemuGuest.Version();
        var qemuStatus = qemuVersion switch
        {
            null => "skipped: QEMU not installed",
            _ when int.TryParse(qemuVersion.Split('.')[0], CultureInfo.InvariantCulture, out var major) && major >= 9 => "mapped-ram",
            _ => $"skipped: QEMU {qemuVersion} has no mapped-ram (9.0 and later; the issue's exec:cat fallback for 7.2 is not implemented)",
        };
        var cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        var kernel = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        var hostRam = MachineConfig.HostMemoryBytes();
        var command = "Ferry.Bench " + string.Join(' ', args);
        var fileSystem = Shell("df", "--output=fstype,source", directory).Split('\n', StringSplitOptions.RemoveEmptyEntries).LastOrDefault()?.Trim() ?? "?";

        Console.WriteLine($"command: {command}");
        Console.WriteLine($"date: {started:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores ({cpu}), {hostRam / (double)(1UL << 30):0.0} GiB RAM, Linux {kernel}, " +
                          (qemuVersion is null ? "QEMU not installed" : $"QEMU {qemuVersion} ({qemuBinary})"));
        Console.WriteLine($"files in {directory} ({fileSystem})");
        Console.WriteLine($"settings: Ferry {threads} snapshot threads, {(paused ? "DIAGNOSTIC: guest paused before the save (Ferry: GuestMachine.Pause, QEMU: stop), so one pass and no hinting" : "live save with free page hinting on")}, guest {cpus} vCPUs (QEMU's: 1, PVH starts only the boot CPU), guest command line '{GuestCommandLine}', " +
                          $"eager and lazy restores, {(cold ? "warm and cold (page cache dropped)" : "warm only")}, {repeat} runs each");
        Console.WriteLine($"QEMU: {qemuStatus}");
        Console.WriteLine();

        await WarmUp(directory);

        var rows = new List<Row>();
        foreach (var size in sizes)
        {
            foreach (var profile in profiles)
            {
                var row = new Row(size, profile, [], []);
                for (var i = 0; i < repeat; i++)
                {
                    var f = await MeasureFerry(size, profile, directory, cold, paused);
                    row.Ferry.Add(f);
                    Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss}] {size} GiB {profile} #{i + 1}: Ferry save {f.Stats.TotalTimeMs:0} ms (wall {f.SaveWallMs:0}), {f.Stats.DowntimeMs:0.0} ms down, " +
                                            $"{f.Stats.TransferredBytes / MiB:0.0} MiB written, file {f.File.AllocatedBytes / MiB:0.0} MiB allocated / {f.File.ApparentBytes / MiB:0.0} MiB; " +
                                            $"baseline {f.BaselineMs:0} ms; eager restore warm {f.Warm?.TotalMs:0} ms, cold {f.Cold?.TotalMs:0} ms; " +
                                            $"lazy (map) restore warm {f.LazyWarm?.TotalMs:0} ms, cold {f.LazyCold?.TotalMs:0} ms; " +
                                            $"lazy (userfaultfd) restore warm {f.UffdWarm?.TotalMs:0} ms (filled {f.UffdWarm?.FillMs:0} ms), cold {f.UffdCold?.TotalMs:0} ms (filled {f.UffdCold?.FillMs:0} ms)");
                    if (qemuStatus == "mapped-ram")
                    {
                        var q = await MeasureQemu(size, profile, directory, threads, cold, qemuRestore, paused);
                        row.Qemu.Add(q);
                        Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss}] {size} GiB {profile} #{i + 1}: QEMU save {q.TotalTimeMs} ms + fsync {q.FsyncMs:0} ms (wall {q.SaveWallMs:0}), {q.DowntimeMs} ms down, " +
                                                $"file {q.File.AllocatedBytes / MiB:0.0} MiB allocated / {q.File.ApparentBytes / MiB:0.0} MiB, multifd {(q.Multifd ? q.Channels : 0)}; " +
                                                $"load warm {q.Warm?.LoadMs:0} ms, cold {q.Cold?.LoadMs:0} ms");
                    }
                }
                rows.Add(row);
            }
        }

        Console.WriteLine();
        PrintTables(rows, repeat, cold);

        if (jsonPath is not null)
        {
            var report = new Report(command, started, Environment.MachineName, Environment.ProcessorCount, hostRam, kernel, cpu, directory, fileSystem,
                qemuVersion, qemuStatus, threads, GuestCommandLine, cpus, cold, paused, repeat, rows);
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(report, JsonOptions));
            Console.WriteLine($"raw runs written to {jsonPath}");
        }
        return 0;
    }

    private static string Ms(double? ms) => ms is { } v ? v.ToString("0", CultureInfo.InvariantCulture) : "-";

    private static string Ratio(double a, double b) => b > 0 ? string.Create(CultureInfo.InvariantCulture, $"{a / b:0.00}x") : "-";

    private static string Size(FileSize f) => string.Create(CultureInfo.InvariantCulture, $"{f.AllocatedBytes / MiB:0.0} ({f.ApparentBytes / MiB:0})");

    /// <summary>The median of the values present (restores are noisy on their own, so each restore figure is its own median).</summary>
    private static double? Med<T>(IEnumerable<T> runs, Func<T, double?> select)
    {
        var values = runs.Select(select).Where(v => v.HasValue).Select(v => v!.Value).Order().ToList();
        return values.Count == 0 ? null : values[values.Count / 2];
    }

    private static string Spread<T>(IEnumerable<T> runs, Func<T, double?> select)
    {
        var values = runs.Select(select).Where(v => v.HasValue).Select(v => v!.Value).ToList();
        return values.Count == 0 ? "-" : string.Create(CultureInfo.InvariantCulture, $"{values.Min():0}-{values.Max():0}");
    }

    private static void PrintTables(List<Row> rows, int repeat, bool cold)
    {
        var c = CultureInfo.InvariantCulture;
        Console.WriteLine($"Median of {repeat}. Save columns: the median run by save time (each side its own); restore columns: the median of each figure on its own. " +
                          "Ferry save = the engine's total time (MachineSnapshots.Save: passes, state, fsyncs and completion mark); " +
                          "QEMU save = query-migrate total-time + an fsync of the file afterwards (QEMU itself never syncs the file; the fsync's share in brackets). " +
                          "Restore: Ferry = GuestMachine.Create + Start(paused) + MachineSnapshots.Restore until the guest runs (eager: every present page read first; lazy = `--lazy=map`: the file mapped copy-on-write, pages read when touched; the userfaultfd mode, `--lazy`, has its own table below); " +
                          $"QEMU = migrate-incoming until query-status says running (process already started). {(cold ? "cold = page cache dropped just before; warm = the file still cached from the save" : "warm only: the file still cached from the save")}.");
        Console.WriteLine();
        Console.WriteLine("| size | profile | guest uses MiB | Ferry save ms | Ferry downtime ms | Ferry file MiB allocated (apparent) | sequential write of same bytes ms | save/baseline | QEMU save ms (fsync) | QEMU file MiB allocated (apparent) | Ferry/QEMU time | Ferry eager restore ms cold / warm | Ferry lazy restore ms cold / warm | QEMU restore ms cold / warm |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var f = row.FerryMedian;
            var q = row.QemuMedian;
            var used = (f.GuestUsedBytes - f.GuestBalloonBytes) / MiB;
            var sb = new StringBuilder();
            sb.Append(c, $"| {row.MemoryGib} GiB | {row.Profile} | {used:0.0} | {f.Stats.TotalTimeMs:0} | {f.Stats.DowntimeMs:0.0} | {Size(f.File)} | {f.BaselineMs:0.0} | {Ratio(f.Stats.TotalTimeMs, f.BaselineMs)} | ");
            if (q is null)
                sb.Append("skipped | - | - | ");
            else
                sb.Append(c, $"{q.TotalTimeMs + q.FsyncMs:0} ({q.FsyncMs:0}) | {Size(q.File)} | {Ratio(f.Stats.TotalTimeMs, q.TotalTimeMs + q.FsyncMs)} | ");
            sb.Append(c, $"{Ms(Med(row.Ferry, r => r.Cold?.TotalMs))} / {Ms(Med(row.Ferry, r => r.Warm?.TotalMs))} | ");
            sb.Append(c, $"{Ms(Med(row.Ferry, r => r.LazyCold?.TotalMs))} / {Ms(Med(row.Ferry, r => r.LazyWarm?.TotalMs))} | ");
            sb.Append(row.Qemu.Count == 0 ? "- |" : $"{Ms(Med(row.Qemu, r => r.Cold?.LoadMs))} / {Ms(Med(row.Qemu, r => r.Warm?.LoadMs))} |");
            Console.WriteLine(sb.ToString());
        }

        if (repeat > 1)
        {
            Console.WriteLine();
            Console.WriteLine("Spread of the runs (min-max, ms):");
            Console.WriteLine();
            Console.WriteLine("| size | profile | Ferry save | baseline | QEMU save + fsync | Ferry restore cold | Ferry restore warm | Ferry lazy cold | Ferry lazy warm | QEMU restore cold | QEMU restore warm |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
            foreach (var row in rows)
            {
                Console.WriteLine($"| {row.MemoryGib} GiB | {row.Profile} | {Spread(row.Ferry, r => r.Stats.TotalTimeMs)} | {Spread(row.Ferry, r => r.BaselineMs)} | {Spread(row.Qemu, r => r.TotalTimeMs + r.FsyncMs)} | " +
                                  $"{Spread(row.Ferry, r => r.Cold?.TotalMs)} | {Spread(row.Ferry, r => r.Warm?.TotalMs)} | {Spread(row.Ferry, r => r.LazyCold?.TotalMs)} | {Spread(row.Ferry, r => r.LazyWarm?.TotalMs)} | " +
                                  $"{Spread(row.Qemu, r => r.Cold?.LoadMs)} | {Spread(row.Qemu, r => r.Warm?.LoadMs)} |");
            }
        }

        Console.WriteLine();
        Console.WriteLine("Ferry's side (save figures from the median save run): save wall = the whole MachineSnapshots.Save call (engine, rename of FILE.partial, resume); written = the engine's transferred bytes; " +
                          "present = pages whose bit is set in the file; restore() = MachineSnapshots.Restore alone, create+start = GuestMachine.Create + Start(paused) before it; " +
                          "verify = the guest's `verify` right after the restore, reading every page it wrote (after a lazy restore this is where the file is read); " +
                          "page checks = the file's own page checksums inside restore(): eager, the busiest loader thread's CRC time; lazy, the whole verifying read of the file before it is mapped (medians).");
        Console.WriteLine();
        Console.WriteLine("| size | profile | save wall ms | setup ms | downtime phases ms | passes (ms each) | normal | zero | untouched | hinted | written MiB | present MiB | allocated MiB (stat / SEEK_DATA) | baseline MiB | eager restore() ms cold / warm | lazy restore() ms cold / warm | create+start ms | eager restore() GiB/s cold / warm | verify ms after eager cold / warm | verify ms after lazy cold / warm | verify pages | page checks ms eager cold / warm | page checks ms lazy cold / warm |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var f = row.FerryMedian;
            var s = f.Stats;
            var passes = $"{s.Passes.Count}: " + string.Join(" + ", s.Passes.Select(p => p.DurationMs.ToString("0.#", c)));
            double Rate(FerryRestore? r) => r is { RestoreMs: > 0 } ? r.BytesRead / (double)(1UL << 30) / (r.RestoreMs / 1000) : 0;
            var phases = s.Downtime is { } d
                ? string.Create(c, $"pause {d.PauseMs:0.0}, sync {d.SyncMs:0.0}, last pass {d.FinalPassMs:0.0}, state {d.SaveStateMs:0.0}, file {d.CompleteMs:0.0}, resume {d.ResumeMs:0.0}")
                : "-";
            Console.WriteLine(string.Create(c,
                $"| {row.MemoryGib} GiB | {row.Profile} | {f.SaveWallMs:0} | {s.SetupTimeMs:0} | {phases} | {passes} | {s.NormalPages} | {s.ZeroPages} | {s.UntouchedPages} | {s.HintedPages} | " +
                $"{s.TransferredBytes / MiB:0.0} | {f.PresentBytes / MiB:0.0} | {f.File.AllocatedBytes / MiB:0.0} / {f.InspectAllocatedBytes / MiB:0.0} | {f.BaselineBytes / MiB:0.0} | " +
                $"{Ms(Med(row.Ferry, r => r.Cold?.RestoreMs))} / {Ms(Med(row.Ferry, r => r.Warm?.RestoreMs))} | {Ms(Med(row.Ferry, r => r.LazyCold?.RestoreMs))} / {Ms(Med(row.Ferry, r => r.LazyWarm?.RestoreMs))} | " +
                $"{Ms(Med(row.Ferry, r => r.Warm?.CreateStartMs))} | " +
                $"{Med(row.Ferry, r => r.Cold is null ? null : Rate(r.Cold)):0.00} / {Med(row.Ferry, r => Rate(r.Warm)):0.00} | " +
                $"{Ms(Med(row.Ferry, r => r.Cold?.VerifyMs))} / {Ms(Med(row.Ferry, r => r.Warm?.VerifyMs))} | {Ms(Med(row.Ferry, r => r.LazyCold?.VerifyMs))} / {Ms(Med(row.Ferry, r => r.LazyWarm?.VerifyMs))} | " +
                $"{f.Warm?.VerifyPagesChecked ?? f.Cold?.VerifyPagesChecked} | " +
                $"{Ms(Med(row.Ferry, r => r.Cold?.PageCheckMs))} / {Ms(Med(row.Ferry, r => r.Warm?.PageCheckMs))} | {Ms(Med(row.Ferry, r => r.LazyCold?.PageCheckMs))} / {Ms(Med(row.Ferry, r => r.LazyWarm?.PageCheckMs))} |"));
        }

        Console.WriteLine();
        Console.WriteLine("Lazy restore through userfaultfd (`run --restore FILE --lazy`, medians), beside eager and the copy-on-write mapping (`--lazy=map`): " +
                          "restore() = until the guest runs; verify = the guest's first `verify` right after; filled = from the start of restore() until every page was in place " +
                          "(the background fill read the whole file once); fault latency = from the handler reading a fault to its page in place; huge = 2 MiB pieces collapsed " +
                          "back into huge pages (anonymous memory only: FERRY_MEMORY_BACKEND=anon). Issue 14's targets: running within 20 ms, verify <= 1.5x eager's, filled <= 1.2x eager's restore.");
        Console.WriteLine();
        Console.WriteLine("| size | profile | restore() ms uffd cold / warm | map cold / warm | eager cold / warm | verify ms uffd cold / warm | map | eager | filled ms cold / warm | fill MiB/s | faults | fault p50 / p99 µs | pages on fault / by fill / zero | huge pieces |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var u = row.Ferry.Select(r => r.UffdWarm).Where(r => r is not null).OrderBy(r => r!.VerifyMs).ElementAtOrDefault(row.Ferry.Count / 2);
            Console.WriteLine(string.Create(c,
                $"| {row.MemoryGib} GiB | {row.Profile} | {Ms(Med(row.Ferry, r => r.UffdCold?.RestoreMs))} / {Ms(Med(row.Ferry, r => r.UffdWarm?.RestoreMs))} | " +
                $"{Ms(Med(row.Ferry, r => r.LazyCold?.RestoreMs))} / {Ms(Med(row.Ferry, r => r.LazyWarm?.RestoreMs))} | {Ms(Med(row.Ferry, r => r.Cold?.RestoreMs))} / {Ms(Med(row.Ferry, r => r.Warm?.RestoreMs))} | " +
                $"{Ms(Med(row.Ferry, r => r.UffdCold?.VerifyMs))} / {Ms(Med(row.Ferry, r => r.UffdWarm?.VerifyMs))} | {Ms(Med(row.Ferry, r => r.LazyWarm?.VerifyMs))} | {Ms(Med(row.Ferry, r => r.Warm?.VerifyMs))} | " +
                $"{Ms(Med(row.Ferry, r => r.UffdCold?.FillMs))} / {Ms(Med(row.Ferry, r => r.UffdWarm?.FillMs))} | {Ms(Med(row.Ferry, r => r.UffdWarm?.FillMiBps))} | {u?.Faults} | " +
                $"{Ms(Med(row.Ferry, r => r.UffdWarm?.FaultP50Us))} / {Ms(Med(row.Ferry, r => r.UffdWarm?.FaultP99Us))} | {u?.PagesByFaults} / {u?.PagesByFill} / {u?.PagesZero} | {u?.PiecesCollapsed} |"));
        }

        if (rows.Any(r => r.Qemu.Count > 0))
        {
            Console.WriteLine();
            Console.WriteLine("QEMU's side (save figures from the median save run): save wall = migrate until query-migrate says completed (10 ms polls, no fsync); restore (medians) = a fresh QEMU with -incoming defer: " +
                              "process start to QMP, migrate-incoming to running, process start to running.");
            Console.WriteLine();
            Console.WriteLine("| size | profile | guest uses MiB | multifd channels | total-time ms | fsync ms | save wall ms | downtime ms | setup ms | transferred MiB | zero pages | normal pages | dirty syncs | start to QMP ms cold / warm | load ms cold / warm | start to running ms cold / warm | verify pages |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
            foreach (var row in rows)
            {
                if (row.QemuMedian is not { } q)
                    continue;
                Console.WriteLine(string.Create(c,
                    $"| {row.MemoryGib} GiB | {row.Profile} | {q.GuestUsedBytes / MiB:0.0} | {(q.Multifd ? q.Channels.ToString(c) : "off")} | {q.TotalTimeMs} | {q.FsyncMs:0} | {q.SaveWallMs:0} | {q.DowntimeMs} | {q.SetupTimeMs} | {q.TransferredBytes / MiB:0.0} | {q.ZeroPages} | {q.NormalPages} | {q.DirtySyncCount} | " +
                    $"{Ms(Med(row.Qemu, r => r.Cold?.StartToQmpMs))} / {Ms(Med(row.Qemu, r => r.Warm?.StartToQmpMs))} | {Ms(Med(row.Qemu, r => r.Cold?.LoadMs))} / {Ms(Med(row.Qemu, r => r.Warm?.LoadMs))} | " +
                    $"{Ms(Med(row.Qemu, r => r.Cold?.StartToRunningMs))} / {Ms(Med(row.Qemu, r => r.Warm?.StartToRunningMs))} | {q.Warm?.VerifyPagesChecked ?? q.Cold?.VerifyPagesChecked} |"));
            }
        }
    }

    private static int s_cpus = 2;

    private static MachineConfig Config(ulong memoryGib) => new()
    {
        MemoryBytes = memoryGib << 30,
        Cpus = s_cpus,
        GuestImagePath = GuestImageLocator.Locate(),
        CommandLine = GuestCommandLine,
        Balloon = true,
    };

    private static async Task WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Guest.Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"timed out waiting for {what}");
            await Task.Delay(1);
        }
    }

    /// <summary>`sync`, then drop the page cache, dentries and inodes (root only): the next read of the file comes from disk.</summary>
    private static void DropCaches()
    {
        Shell("sync");
        File.WriteAllText("/proc/sys/vm/drop_caches", "3");
    }

    private static string Shell(string program, params string[] arguments)
    {
        using var p = Process.Start(new ProcessStartInfo(program, arguments) { RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        if (p.ExitCode != 0)
            throw new InvalidOperationException($"{program} {string.Join(' ', arguments)} exited {p.ExitCode}: {p.StandardError.ReadToEnd()}");
        return output;
    }

    /// <summary>Apparent size and allocated bytes (st_blocks × st_blksize units as stat reports them, i.e. %b × %B).</summary>
    private static FileSize Measure(string path)
    {
        var fields = Shell("stat", "--format=%s %b %B", path).Split(' ', StringSplitOptions.RemoveEmptyEntries);
        return new FileSize(long.Parse(fields[0], CultureInfo.InvariantCulture),
            long.Parse(fields[1], CultureInfo.InvariantCulture) * long.Parse(fields[2], CultureInfo.InvariantCulture));
    }

    private static void Delete(string path)
    {
        File.Delete(path);
        File.Delete(MachineSnapshots.PartialPath(path));
    }

    /// <summary>
    /// The baseline: a plain sequential write of <paramref name="bytes"/> into a new file in the same directory,
    /// 1 MiB writes from one buffer of non-zero data, then fsync. Timed from creating the file to the end of fsync.
    /// </summary>
    private static double SequentialWrite(string directory, long bytes)
    {
        var path = Path.Combine(directory, $"baseline-{Environment.ProcessId}.bin");
        var buffer = new byte[1 << 20];
        new Random(42).NextBytes(buffer);
        for (var i = 0; i < buffer.Length; i += 4096)
            buffer[i] |= 1; // every page non-zero
        var clock = Stopwatch.StartNew();
        using (var file = File.OpenHandle(path, FileMode.Create, FileAccess.Write))
        {
            long at = 0;
            while (at < bytes)
            {
                var n = (int)Math.Min(buffer.Length, bytes - at);
                RandomAccess.Write(file, buffer.AsSpan(0, n), at);
                at += n;
            }
            RandomAccess.FlushToDisk(file);
        }
        var ms = clock.Elapsed.TotalMilliseconds;
        File.Delete(path);
        return ms;
    }

    /// <summary>Boots the guest, prepares the profile (the guest's usable memory from its `ready` line); returns the console's `stats`.</summary>
    private static async Task<JsonElement> Prepare(GuestConsole console, JsonElement ready, string profile, Func<string, Task<JsonElement>> cmd)
    {
        var usableMib = ready.GetProperty("usable_bytes").GetUInt64() >> 20;
        switch (profile)
        {
            case "idle-fresh":
                break;
            case "fill-free-hint":
                await cmd($"fill {usableMib * 6 / 10}");
                await cmd("free");
                break;
            case "fill-keep":
                await cmd($"fill {usableMib * 6 / 10}");
                break;
            default:
                throw new ArgumentException($"unknown profile '{profile}'");
        }
        return await cmd("stats");
    }

    /// <summary>A 512 MiB save and restore before anything is measured, so no measured run pays for the JIT.</summary>
    private static async Task WarmUp(string directory)
    {
        var path = Path.Combine(directory, "warmup.fsnap");
        var config = Config(1) with { MemoryBytes = 512UL << 20 };
        var console = new GuestConsole();
        using (var machine = GuestMachine.Create(config, console))
        {
            machine.Start();
            await console.WaitForEventAsync("ready", Guest.Timeout);
            await WaitFor(() => machine.Balloon!.DriverReady, "the balloon driver");
            await Guest.Cmd(console, "fill 64");
            MachineSnapshots.Save(machine, path);
        }
        using (var snapshot = SnapshotFile.Open(path))
            snapshot.Inspect();
        var restoreConsole = new GuestConsole();
        using (var restored = GuestMachine.Create(config, restoreConsole))
        {
            restored.Start(paused: true);
            MachineSnapshots.Restore(restored, path);
            await Guest.Cmd(restoreConsole, "verify");
        }
        var lazyConsole = new GuestConsole();
        using (var restored = GuestMachine.Create(config, lazyConsole))
        {
            restored.Start(paused: true);
            MachineSnapshots.Restore(restored, path, mode: RestoreMode.LazyMap);
            await Guest.Cmd(lazyConsole, "verify");
        }
        var uffdConsole = new GuestConsole();
        using (var restored = GuestMachine.Create(config, uffdConsole))
        {
            restored.Start(paused: true);
            var report = MachineSnapshots.Restore(restored, path, mode: RestoreMode.Lazy);
            await Guest.Cmd(uffdConsole, "verify");
            await report.Paging!.Completion;
        }
        SequentialWrite(directory, 16 << 20);
        Delete(path);
    }

    private static async Task<FerryRestore> RestoreFerry(ulong memoryGib, string path, bool cold, RestoreMode mode)
    {
        if (cold)
            DropCaches();
        var config = Config(memoryGib);
        var console = new GuestConsole();
        var clock = Stopwatch.StartNew();
        using var machine = GuestMachine.Create(config, console);
        machine.Start(paused: true);
        var createStart = clock.Elapsed.TotalMilliseconds;
        var report = MachineSnapshots.Restore(machine, path, mode: mode);
        var total = clock.Elapsed.TotalMilliseconds;
        var verifyClock = Stopwatch.StartNew();
        var verify = await Guest.Cmd(console, "verify");
        var verifyMs = verifyClock.Elapsed.TotalMilliseconds;
        if (!verify.GetProperty("passed").GetBoolean())
            throw new InvalidOperationException($"verify failed after restoring {path} ({(cold ? "cold" : "warm")}, {mode}): {verify}");
        var restore = new FerryRestore(cold, mode, total, createStart, report.Milliseconds, report.PagesLoaded, report.BytesRead, verify.GetProperty("pages_checked").GetUInt64(), verifyMs, report.PageCheckMilliseconds);
        if (report.Paging is not { } paging)
            return restore;
        // The whole file paged in: the fill's end, measured from the start of Restore (the pager's own clock).
        await paging.Completion.WaitAsync(Guest.Timeout);
        var s = paging.Statistics();
        return restore with
        {
            FillMs = paging.MillisecondsToComplete ?? paging.MillisecondsSinceStart, FaultP50Us = s.FaultLatencyP50Us, FaultP99Us = s.FaultLatencyP99Us,
            Faults = s.Faults, PagesByFaults = s.PagesFetchedByFaults, PagesByFill = s.PagesFetchedByFill, PagesZero = s.PagesResolvedLocally,
            PiecesCollapsed = s.PiecesCollapsed, FillMiBps = s.FillMiBPerSecond,
        };
    }

    internal static async Task<FerryRun> MeasureFerry(ulong memoryGib, string profile, string directory, bool cold, bool paused)
    {
        var path = Path.Combine(directory, $"ferry-{memoryGib}g-{profile}.fsnap");
        Delete(path);
        var config = Config(memoryGib);
        var console = new GuestConsole();
        ulong used, ballooned, total;
        double prepareMs, saveWallMs;
        MigrationStats stats;
        using (var source = GuestMachine.Create(config, console))
        {
            source.Start();
            var readyTask = console.WaitForEventAsync("ready", Guest.Timeout);
            if (await Task.WhenAny(readyTask, source.Exited) != readyTask)
                throw new InvalidOperationException($"the guest stopped before it was ready: {source.Exited.Result.Message}");
            var ready = await readyTask;
            await WaitFor(() => source.Balloon!.DriverReady, "the balloon driver");
            var prepare = Stopwatch.StartNew();
            var stats0 = await Prepare(console, ready, profile, c => Guest.Cmd(console, c));
            prepareMs = prepare.Elapsed.TotalMilliseconds;
            used = stats0.GetProperty("used_bytes").GetUInt64();
            ballooned = stats0.GetProperty("balloon_bytes").GetUInt64();
            total = stats0.GetProperty("total_bytes").GetUInt64();

            if (paused)
                source.Pause();
            var clock = Stopwatch.StartNew();
            stats = MachineSnapshots.Save(source, path);
            saveWallMs = clock.Elapsed.TotalMilliseconds;
            var expected = paused ? MachineStatus.Paused : MachineStatus.Running;
            if (source.Status != expected)
                throw new InvalidOperationException($"the guest is '{source.Status}' after the save, not {expected}");
        }

        var file = Measure(path);
        long inspectAllocated, present, presentPages;
        using (var snapshot = SnapshotFile.Open(path))
        {
            var inspection = snapshot.Inspect();
            inspectAllocated = inspection.AllocatedBytes;
            present = inspection.PresentBytes;
            presentPages = inspection.Blocks.Sum(b => (long)b.PresentPages);
        }

        var baselineBytes = stats.TransferredBytes;
        var baselineMs = SequentialWrite(directory, baselineBytes);

        var warm = await RestoreFerry(memoryGib, path, cold: false, RestoreMode.Eager);
        var coldRun = cold ? await RestoreFerry(memoryGib, path, cold: true, RestoreMode.Eager) : null;
        var lazyWarm = await RestoreFerry(memoryGib, path, cold: false, RestoreMode.LazyMap);
        var lazyCold = cold ? await RestoreFerry(memoryGib, path, cold: true, RestoreMode.LazyMap) : null;
        var uffdWarm = await RestoreFerry(memoryGib, path, cold: false, RestoreMode.Lazy);
        var uffdCold = cold ? await RestoreFerry(memoryGib, path, cold: true, RestoreMode.Lazy) : null;
        Delete(path);
        return new FerryRun(used, ballooned, total, prepareMs, saveWallMs, stats, file, inspectAllocated, present, presentPages, baselineMs, baselineBytes, warm, coldRun, lazyWarm, lazyCold, uffdWarm, uffdCold);
    }

    private static void SetQemuMigrationOptions(Ferry.Qemu.QemuGuest qemu, int channels, bool multifd)
    {
        var capabilities = new JsonArray { new JsonObject { ["capability"] = "mapped-ram", ["state"] = true } };
        if (multifd)
            capabilities.Add(new JsonObject { ["capability"] = "multifd", ["state"] = true });
        qemu.Qmp.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = capabilities });
        var parameters = new JsonObject
        {
            ["max-bandwidth"] = long.MaxValue / 2,
            ["downtime-limit"] = 300,
        };
        if (multifd)
            parameters["multifd-channels"] = channels;
        qemu.Qmp.Execute("migrate-set-parameters", parameters);
    }

    private static async Task<QemuRestore> RestoreQemu(ulong memoryGib, string path, int channels, bool multifd, bool cold)
    {
        if (cold)
            DropCaches();
        var clock = Stopwatch.StartNew();
        using var qemu = Ferry.Qemu.QemuGuest.Start(new Ferry.Qemu.QemuOptions { MemoryMib = memoryGib * 1024, FreePageHint = true, Incoming = "defer" });
        _ = qemu.Qmp;
        var startToQmp = clock.Elapsed.TotalMilliseconds;
        SetQemuMigrationOptions(qemu, channels, multifd);
        var load = Stopwatch.StartNew();
        qemu.Qmp.Execute("migrate-incoming", new JsonObject { ["uri"] = $"file:{path}" });
        var deadline = DateTime.UtcNow + Ferry.Qemu.QemuGuest.Timeout;
        while (true)
        {
            var status = qemu.Qmp.Execute("query-status")!["status"]!.GetValue<string>();
            if (status == "running")
                break;
            if (qemu.HasExited)
                throw new InvalidOperationException($"QEMU exited ({qemu.ExitCode}) while loading {path}");
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"QEMU still '{status}' loading {path}");
            await Task.Delay(1);
        }
        var loadMs = load.Elapsed.TotalMilliseconds;
        var startToRunning = clock.Elapsed.TotalMilliseconds;
        var verify = await qemu.Cmd("verify");
        if (!verify.GetProperty("passed").GetBoolean())
            throw new InvalidOperationException($"verify failed after QEMU loaded {path}: {verify}");
        return new QemuRestore(cold, startToQmp, loadMs, startToRunning, verify.GetProperty("pages_checked").GetUInt64());
    }

    internal static async Task<QemuRun> MeasureQemu(ulong memoryGib, string profile, string directory, int channels, bool cold, bool restore, bool paused)
    {
        var path = Path.Combine(directory, $"qemu-{memoryGib}g-{profile}.mapped-ram");
        File.Delete(path);
        var options = new Ferry.Qemu.QemuOptions { MemoryMib = memoryGib * 1024, FreePageHint = true };
        ulong used;
        double wallMs;
        JsonNode info;
        bool multifd;
        using (var qemu = Ferry.Qemu.QemuGuest.Start(options))
        {
            var ready = await qemu.WaitReadyAsync();
            var stats = await Prepare(qemu.Console, ready, profile, c => qemu.Cmd(c));
            used = stats.GetProperty("used_bytes").GetUInt64() - stats.GetProperty("balloon_bytes").GetUInt64();
            multifd = true;
            try
            {
                SetQemuMigrationOptions(qemu, channels, multifd: true);
            }
            catch (Ferry.Control.QmpException e)
            {
                Console.Error.WriteLine($"QEMU refused multifd with mapped-ram ({e.Message}); saving with mapped-ram alone");
                multifd = false;
                SetQemuMigrationOptions(qemu, channels, multifd: false);
            }
            if (paused)
                qemu.Qmp.Execute("stop");
            var clock = Stopwatch.StartNew();
            qemu.Qmp.Execute("migrate", new JsonObject { ["uri"] = $"file:{path}" });
            var deadline = DateTime.UtcNow + Ferry.Qemu.QemuGuest.Timeout;
            while (true)
            {
                info = qemu.Qmp.Execute("query-migrate")!;
                var status = info["status"]?.GetValue<string>() ?? "none";
                if (status is "completed" or "failed" or "cancelled")
                    break;
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException($"QEMU's save still '{status}' after {Ferry.Qemu.QemuGuest.Timeout.TotalSeconds} s");
                await Task.Delay(10);
            }
            wallMs = clock.Elapsed.TotalMilliseconds;
            if (info["status"]!.GetValue<string>() != "completed")
                throw new InvalidOperationException($"QEMU's save to {path} failed: {info.ToJsonString()}");
        }
        // QEMU never syncs the file (no fsync/fdatasync in its file: migration; checked with strace): "completed"
        // means in the page cache. Ferry's save ends with the file on disk, so the comparable figure adds this.
        var sync = Stopwatch.StartNew();
        using (var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.FlushToDisk(handle);
        var fsyncMs = sync.Elapsed.TotalMilliseconds;
        var file = Measure(path);
        var ram = info["ram"];
        ulong U(string name) => ram?[name]?.GetValue<ulong>() ?? 0;
        QemuRestore? warm = null, coldRun = null;
        if (restore)
        {
            warm = await RestoreQemu(memoryGib, path, channels, multifd, cold: false);
            if (cold)
                coldRun = await RestoreQemu(memoryGib, path, channels, multifd, cold: true);
        }
        File.Delete(path);
        return new QemuRun(used, wallMs, info["total-time"]?.GetValue<long>() ?? -1, fsyncMs, info["downtime"]?.GetValue<long>() ?? -1, info["setup-time"]?.GetValue<long>() ?? -1,
            U("transferred"), U("duplicate"), U("normal"), U("dirty-sync-count"), multifd, channels, file, warm, coldRun);
    }
}
