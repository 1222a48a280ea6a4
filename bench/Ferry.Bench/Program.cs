using System.Diagnostics;
using System.Globalization;
using System.Text.Json;
using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Machine;

// End-to-end benchmarks for the foundation. Each figure is printed beside a baseline measured in the same run.
//   fill     --mib N [--rounds R]   guest `fill N` in a fresh VM vs the host writing the same pattern into a fresh memfd
//   dirtylog [--memory-gib G]       cost of one dirty-log sync of a G GiB guest with 0%, 1% and 50% of its pages dirty
//   migrate  [--memory-gib 4,8] ... live migration, Ferry beside QEMU and the loopback TCP ceiling (issue 5)
//   snapshot [--memory-gib 4,8] ... snapshot save/restore, Ferry beside a sequential write and QEMU's mapped-ram (issue 6)
//   snapshot-verify [--gib 2]       the cost of checking every page of a snapshot file, beside a plain read of it (issue 16; no KVM)
//   lazy-restore [--gib 2]          lazy (demand-paged) against eager restore of a snapshot file, the host side (issue 14; no KVM)
var mode = args.Length > 0 ? args[0] : "help";
string Arg(string name, string fallback)
{
    var i = Array.IndexOf(args, "--" + name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : fallback;
}
// --cpus defaults to 1 for migrate and snapshot: QEMU's PVH entry starts only the boot CPU, so its guest has one
// vCPU, and a 2-vCPU Ferry guest running `dirty` takes both cores of these hosts from the migration threads (4 GiB
// dirty: Ferry/QEMU time 1.93x with 2 vCPUs, 0.51x with 1, same invocation kind, 2026-11-22).
switch (mode)
{
    case "fill":
        await FillBench.Run(ulong.Parse(Arg("mib", "1024"), CultureInfo.InvariantCulture), int.Parse(Arg("rounds", "3"), CultureInfo.InvariantCulture), args.Contains("--decompose"));
        break;
    case "balloon":
        await BalloonBench.Run(ulong.Parse(Arg("memory-gib", "8"), CultureInfo.InvariantCulture));
        break;
    case "qemu":
        await QemuBench.Run(
            Arg("memory-gib", "4,8").Split(',').Select(g => ulong.Parse(g, CultureInfo.InvariantCulture)).ToArray(),
            Arg("profiles", "idle-fresh,fill-free,balloon10,dirty").Split(','),
            Arg("hint", "on,off").Split(',').Select(h => h == "on").ToArray(),
            long.Parse(Arg("downtime-ms", "300"), CultureInfo.InvariantCulture),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture));
        break;
    case "dirtylog":
        await DirtyLogBench.Run(ulong.Parse(Arg("memory-gib", "8"), CultureInfo.InvariantCulture));
        break;
    case "migrate":
        return await MigrateBench.Run(
            args,
            Arg("memory-gib", "4,8").Split(',').Select(g => ulong.Parse(g, CultureInfo.InvariantCulture)).ToArray(),
            Arg("profiles", string.Join(',', MigrateBench.AllProfiles)).Split(','),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture),
            long.Parse(Arg("downtime-ms", "300"), CultureInfo.InvariantCulture),
            Arg("guest-cmdline", "report_delay_ms=600000"),
            Arg("json", "") is { Length: > 0 } json ? json : null,
            int.Parse(Arg("cpus", "1"), CultureInfo.InvariantCulture),
            args.Contains("--prepopulate-destination"),
            args.Contains("--verify"),
            args.Contains("--tls"));
    case "snapshot":
        return await SnapshotBench.Run(
            args,
            Arg("memory-gib", "4,8").Split(',').Select(g => ulong.Parse(g, CultureInfo.InvariantCulture)).ToArray(),
            Arg("profiles", string.Join(',', SnapshotBench.DefaultProfiles)).Split(','),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture),
            Arg("dir", "/var/tmp/ferry-snap-bench"),
            Arg("json", "") is { Length: > 0 } snapshotJson ? snapshotJson : null,
            !args.Contains("--warm-only"),
            !args.Contains("--no-qemu-restore"),
            args.Contains("--paused"),
            int.Parse(Arg("cpus", "1"), CultureInfo.InvariantCulture));
    case "snapshot-verify":
        return SnapshotVerifyBench.Run(
            ulong.Parse(Arg("gib", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("threads", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture),
            Arg("dir", "/var/tmp/ferry-snap-bench"));
    case "lazy-restore":
        return LazyRestoreBench.Run(
            ulong.Parse(Arg("gib", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("threads", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture),
            Arg("dir", "/var/tmp/ferry-snap-bench"),
            MachineConfig.ParseMemoryBackend(Arg("backend", "anon")));
    case "tls":
        return TlsBench.Run(
            ulong.Parse(Arg("gib", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("channels", "2"), CultureInfo.InvariantCulture),
            int.Parse(Arg("repeat", "3"), CultureInfo.InvariantCulture),
            Ferry.Machine.MachineConfig.ParseMemoryBackend(Arg("backend", "memfd")),
            Arg("destination", "fresh") == "warm");
    default:
        Console.WriteLine("usage: Ferry.Bench fill --mib N [--rounds R] [--decompose] | dirtylog [--memory-gib G] | balloon [--memory-gib G] | qemu [--memory-gib 4,8] [--profiles idle-fresh,fill-free,balloon10,dirty] [--hint on,off] [--downtime-ms 300] [--repeat 3] | migrate [--memory-gib 4,8] [--profiles idle-fresh,fill-free-hint,fill-free-nohint,balloon10,dirty(,fill-keep,dirty-postcopy)] [--repeat 3] [--downtime-ms 300] [--guest-cmdline report_delay_ms=600000] [--cpus 1] [--prepopulate-destination] [--verify] [--tls] [--json FILE] | snapshot [--memory-gib 4,8] [--profiles idle-fresh,fill-free-hint(,fill-keep)] [--repeat 3] [--dir /var/tmp/ferry-snap-bench] [--warm-only] [--no-qemu-restore] [--paused] [--cpus 2] [--json FILE] | snapshot-verify [--gib 2] [--threads 2] [--repeat 3] [--dir /var/tmp/ferry-snap-bench] | lazy-restore [--gib 2] [--threads 2] [--repeat 3] [--dir /var/tmp/ferry-snap-bench] [--backend anon|memfd] | tls [--gib 2] [--channels 2] [--repeat 3] [--backend memfd|anon] [--destination fresh|warm]");
        return 2;
}
return 0;

internal static class Guest
{
    public static readonly TimeSpan Timeout = TimeSpan.FromMinutes(10);

    public static async Task<(GuestMachine Machine, GuestConsole Console)> Boot(ulong memoryBytes, int cpus = 1, string commandLine = "")
    {
        var console = new GuestConsole();
        var machine = GuestMachine.Create(new MachineConfig { MemoryBytes = memoryBytes, Cpus = cpus, GuestImagePath = GuestImageLocator.Locate(), CommandLine = commandLine }, console);
        machine.Start();
        await console.WaitForEventAsync("ready", Timeout);
        return (machine, console);
    }

    public static async Task<JsonElement> Cmd(GuestConsole console, string command)
    {
        var reply = await console.CommandAsync(command, Timeout);
        if (!reply.GetProperty("ok").GetBoolean())
            throw new InvalidOperationException($"{command}: {reply}");
        return reply;
    }

    public static double Median(List<double> values)
    {
        values.Sort();
        return values[values.Count / 2];
    }
}

internal static class FillBench
{
    public static async Task Run(ulong mib, int rounds, bool decompose)
    {
        var bytes = mib << 20;
        var host = new List<double>();
        var guestReported = new List<double>();
        var guestWall = new List<double>();
        var guestPrefaulted = new List<double>();
        var guestRefill = new List<double>();
        for (var r = 0; r < rounds; r++)
        {
            host.Add(HostFill(bytes));
            var (machine, console) = await Guest.Boot(bytes + (256UL << 20));
            using (machine)
            {
                var sw = Stopwatch.StartNew();
                var reply = await Guest.Cmd(console, $"fill {mib}");
                guestWall.Add(sw.Elapsed.TotalSeconds);
                guestReported.Add(reply.GetProperty("ns").GetDouble() / 1e9);
                if (decompose)
                {
                    // The same pages again: host pages and KVM's mappings both exist now.
                    await Guest.Cmd(console, "free");
                    guestRefill.Add((await Guest.Cmd(console, $"fill {mib}")).GetProperty("ns").GetDouble() / 1e9);
                }
            }
            if (decompose)
            {
                // Host pages allocated in advance (MADV_POPULATE_WRITE), KVM mappings not: isolates KVM's fault cost.
                (machine, console) = await Guest.Boot(bytes + (256UL << 20));
                using (machine)
                {
                    foreach (var block in machine.Memory.Blocks)
                        ErrnoException.Check(Libc.Madvise(block.Mapping.Address, (nuint)block.Size, 23), "madvise(MADV_POPULATE_WRITE)");
                    guestPrefaulted.Add((await Guest.Cmd(console, $"fill {mib}")).GetProperty("ns").GetDouble() / 1e9);
                }
            }
        }
        double GiBps(double seconds) => bytes / seconds / (1UL << 30);
        var h = Guest.Median(host);
        var g = Guest.Median(guestReported);
        var gw = Guest.Median(guestWall);
        Console.WriteLine($"fill {mib} MiB of fresh memory, median of {rounds} rounds:");
        Console.WriteLine($"  host fill (same pattern into a fresh memfd mapping): {GiBps(h),6:0.00} GiB/s  ({h * 1000:0} ms)");
        Console.WriteLine($"  guest fill, as the guest times it (TSC):             {GiBps(g),6:0.00} GiB/s  ({g * 1000:0} ms)");
        Console.WriteLine($"  guest fill, command round trip on the host:          {GiBps(gw),6:0.00} GiB/s  ({gw * 1000:0} ms)");
        Console.WriteLine($"  guest / host: guest at {100 * h / g:0}% of the host rate");
        if (decompose)
        {
            var p = Guest.Median(guestPrefaulted);
            var f = Guest.Median(guestRefill);
            Console.WriteLine($"  decomposition (guest timings):");
            Console.WriteLine($"    host pages pre-allocated, KVM mappings not:  {GiBps(p),6:0.00} GiB/s  ({p * 1000:0} ms)");
            Console.WriteLine($"    refill of pages already mapped:              {GiBps(f),6:0.00} GiB/s  ({f * 1000:0} ms)");
            Console.WriteLine($"    per 4 KiB page: host first touch {h / (bytes / 4096.0) * 1e6:0.00} us, guest first touch {g / (bytes / 4096.0) * 1e6:0.00} us, KVM mapping alone {(p - f) / (bytes / 4096.0) * 1e6:0.00} us");
        }
    }

    /// <summary>Writes the guest's fill pattern into a fresh memfd (first touch included), as the guest does.</summary>
    private static unsafe double HostFill(ulong bytes)
    {
        using var block = RamBlock.Create("bench", 0, bytes, 0);
        var p = (ulong*)block.Mapping.Address;
        const ulong K = 0x9E3779B97F4A7C15UL;
        var sw = Stopwatch.StartNew();
        var value = unchecked(0 * K + 1 * 0xC2B2AE3D27D4EB4FUL);
        var words = bytes / 8;
        for (ulong i = 0; i < words; i++)
        {
            p[i] = value;
            value = unchecked(value + 8 * K);
        }
        return sw.Elapsed.TotalSeconds;
    }
}

internal static class DirtyLogBench
{
    public static async Task Run(ulong memoryGib)
    {
        var (machine, console) = await Guest.Boot(memoryGib << 30);
        using (machine)
        {
            machine.Vm.SetDirtyLogging(true);
            var bitmaps = machine.Memory.Blocks.Select(b => new PageSet(b.PageCount)).ToArray();
            double Sync()
            {
                foreach (var b in bitmaps)
                    b.Clear();
                var sw = Stopwatch.StartNew();
                for (var i = 0; i < bitmaps.Length; i++)
                    machine.Vm.SyncDirtyLog(machine.Memory.Blocks[i], bitmaps[i]);
                return sw.Elapsed.TotalMilliseconds;
            }
            Sync();
            var totalPages = machine.Memory.Blocks.Sum(b => (double)b.PageCount);
            Console.WriteLine($"dirty-log sync of a {memoryGib} GiB guest ({totalPages:0} pages in {bitmaps.Length} slots), median of 5:");
            foreach (var percent in new[] { 0.0, 1.0, 50.0 })
            {
                var mib = (ulong)(memoryGib * 1024 * percent / 100);
                var times = new List<double>();
                ulong dirty = 0;
                for (var round = 0; round < 6; round++)
                {
                    if (mib > 0)
                    {
                        await Guest.Cmd(console, "free");
                        await Guest.Cmd(console, $"fill {mib}");
                    }
                    else
                    {
                        await Task.Delay(100);
                    }
                    var ms = Sync();
                    dirty = (ulong)bitmaps.Sum(b => (double)b.Count());
                    if (round > 0) // the first round includes first-touch effects
                        times.Add(ms);
                }
                Console.WriteLine($"  {percent,4:0}% dirty ({dirty,8} pages reported): {Guest.Median(times),8:0.00} ms per sync");
            }
        }
    }
}

internal static class BalloonBench
{
    private static async Task WaitFor(Func<bool> condition)
    {
        while (!condition())
            await Task.Delay(1);
    }

    private static async Task<(double Inflate, double Deflate)> InflateDeflate(ulong memoryGib, string commandLine)
    {
        var (machine, console) = await Guest.Boot(memoryGib << 30, commandLine: commandLine);
        using (machine)
        {
            var balloon = machine.Balloon!;
            await WaitFor(() => balloon.DriverReady);
            var target = (uint)((memoryGib << 30) / 4096 * 7 / 8);
            var sw = Stopwatch.StartNew();
            balloon.SetTargetPages(target);
            await WaitFor(() => balloon.ActualPages == target);
            var inflate = sw.Elapsed.TotalMilliseconds;
            sw.Restart();
            balloon.SetTargetPages(0);
            await WaitFor(() => balloon.ActualPages == 0);
            return (inflate, sw.Elapsed.TotalMilliseconds);
        }
    }

    public static async Task Run(ulong memoryGib)
    {
        Console.WriteLine($"balloon on a {memoryGib} GiB guest: inflate 7/8 of RAM, then deflate to 0 (time until the guest reports `actual`):");
        var pfn = await InflateDeflate(memoryGib, "balloon_features=0x10000003f");
        var bitmap = await InflateDeflate(memoryGib, "");
        Console.WriteLine($"  PFN arrays (baseline, 256 PFNs per buffer): inflate {pfn.Inflate,8:0} ms, deflate {pfn.Deflate,8:0} ms, total {pfn.Inflate + pfn.Deflate,8:0} ms");
        Console.WriteLine($"  page bitmaps (FERRY_F_PAGE_BITMAP):         inflate {bitmap.Inflate,8:0} ms, deflate {bitmap.Deflate,8:0} ms, total {bitmap.Inflate + bitmap.Deflate,8:0} ms");
        Console.WriteLine($"  bitmaps / PFN arrays: {(bitmap.Inflate + bitmap.Deflate) / (pfn.Inflate + pfn.Deflate):0.00}x the time (the page-bitmap series reported 4126 ms -> 590 ms, 0.14x)");

        var (machine, console) = await Guest.Boot(memoryGib << 30);
        using (machine)
        {
            var balloon = machine.Balloon!;
            await WaitFor(() => balloon.DriverReady);
            var usable = (await Guest.Cmd(console, "stats")).GetProperty("total_bytes").GetUInt64();
            await Guest.Cmd(console, $"fill {usable * 4 / 10 >> 20}");
            var free = (await Guest.Cmd(console, "stats")).GetProperty("free_bytes").GetUInt64();
            var sw = Stopwatch.StartNew();
            balloon.StartFreePageHinting();
            await WaitFor(() => balloon.HintStatus.State == Ferry.Devices.Virtio.Balloon.FreePageHintState.Stopped);
            var ms = sw.Elapsed.TotalMilliseconds;
            var hinted = balloon.HintStatus.HintedPages * 4096;
            balloon.FinishFreePageHinting();
            Console.WriteLine($"free page hint run with {100.0 * free / usable:0}% of RAM free ({free >> 20} MiB): {ms:0} ms until the guest had no more free blocks; {hinted >> 20} MiB hinted ({100.0 * hinted / free:0.0}% of free)");
        }
    }
}

/// <summary>
/// QEMU's own migration figures for Ferry's guest (issue 4): two QEMU processes on loopback, max-bandwidth at its
/// maximum. The migration benchmark calls <see cref="Measure"/> to set Ferry's figures beside these.
/// </summary>
internal static class QemuBench
{
    /// <summary>Boots the guest under QEMU, prepares the profile, migrates once and returns QEMU's figures.</summary>
    public static async Task<Ferry.Qemu.QemuMigrationResult> Measure(ulong memoryGib, string profileName, bool hint, long downtimeMs)
    {
        var (profile, tls) = MigrateBench.SplitTls(profileName);
        var options = new Ferry.Qemu.QemuOptions { MemoryMib = memoryGib * 1024, FreePageHint = hint, TlsCredentials = tls ? MigrateBench.TlsCredentials : null };
        using var source = Ferry.Qemu.QemuGuest.Start(options);
        var ready = await source.WaitReadyAsync();
        var usableMib = ready.GetProperty("usable_bytes").GetUInt64() >> 20;
        switch (profile)
        {
            case "idle-fresh":
                break;
            case "fill-free":
                await source.Cmd($"fill {usableMib * 6 / 10}");
                await source.Cmd("free");
                break;
            case "fill-keep":
                await source.Cmd($"fill {usableMib * 6 / 10}");
                break;
            case "balloon10":
                await source.BalloonTo(memoryGib * 1024 * 1024 * 1024 / 10);
                break;
            case "dirty":
                await source.Cmd("dirty 200 1024");
                await Task.Delay(500);
                break;
            case "dirty-postcopy":
                await source.Cmd($"dirty {MigrateBench.PostcopyDirtyMiBps} 1024");
                await Task.Delay(500);
                break;
            default:
                throw new ArgumentException($"unknown profile '{profile}' (idle-fresh, fill-free, fill-keep, balloon10, dirty, dirty-postcopy)");
        }
        var settings = profile == "dirty-postcopy"
            ? new Ferry.Qemu.QemuMigrationSettings(MigrateBench.PostcopyBandwidth, MigrateBench.PostcopyAfterPasses)
            : null;
        var (destination, result) = await Ferry.Qemu.QemuMigration.MigrateAsync(source, options, downtimeMs, settings);
        using (destination)
        {
            if (profile is "dirty" or "dirty-postcopy")
                await destination.Cmd("stop");
            var verify = await destination.Cmd("verify");
            if (!verify.GetProperty("passed").GetBoolean())
                throw new InvalidOperationException($"verify failed on the QEMU destination: {verify}");
        }
        return result;
    }

    public static async Task Run(ulong[] sizes, string[] profiles, bool[] hints, long downtimeMs, int repeat)
    {
        Console.WriteLine($"QEMU {Ferry.Qemu.QemuGuest.Version()} migrating Ferry's guest between two QEMU processes on loopback; max-bandwidth at its maximum, downtime-limit {downtimeMs} ms; median of {repeat} (by total time)");
        Console.WriteLine($"| size | profile | hint | total ms | downtime ms | transferred MiB | zero pages | normal pages | mbps |");
        Console.WriteLine($"|---|---|---|---|---|---|---|---|---|");
        foreach (var size in sizes)
        {
            foreach (var profile in profiles)
            {
                foreach (var hint in hints)
                {
                    var runs = new List<Ferry.Qemu.QemuMigrationResult>();
                    for (var i = 0; i < repeat; i++)
                        runs.Add(await Measure(size, profile, hint, downtimeMs));
                    var r = runs.OrderBy(x => x.TotalTimeMs).ElementAt(runs.Count / 2);
                    Console.WriteLine($"| {size} GiB | {profile} | {(hint ? "on" : "off")} | {r.TotalTimeMs} | {r.DowntimeMs} | {r.TransferredBytes / 1048576.0:0.0} | {r.ZeroPages} | {r.NormalPages} | {r.Mbps:0} |");
                }
            }
        }
    }
}
