using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;

/// <summary>
/// The end-to-end live-migration benchmark (issue 5, point 7). In one invocation: the loopback TCP ceiling, then
/// per size and profile Ferry migrating a 2-vCPU guest between two machines in this process over loopback TCP, and
/// QEMU migrating the same guest image with the same profile (<see cref="QemuBench.Measure"/>), each repeated and
/// reported as the median run by total time.
/// </summary>
internal static class MigrateBench
{
    public static readonly string[] DefaultProfiles = ["idle-fresh", "fill-free-hint", "fill-free-nohint", "balloon10", "dirty"];

    /// <summary>
    /// Also fill-keep: 60% of usable memory filled and kept, every page of it moved (and with --verify, hashed on both
    /// sides); and dirty-postcopy (issue 14): the guest dirties 1 GiB at <see cref="PostcopyDirtyMiBps"/>, twice
    /// max-bandwidth (<see cref="PostcopyBandwidth"/>), so precopy cannot converge, and both VMMs switch to postcopy
    /// after <see cref="PostcopyAfterPasses"/> passes (Ferry by its parameter, QEMU by migrate-start-postcopy after as
    /// many dirty-log syncs).
    /// </summary>
    public static readonly string[] AllProfiles = [.. DefaultProfiles, "fill-keep"];

    /// <summary>What --profiles accepts (dirty-postcopy only when asked for).</summary>
    public static readonly string[] ValidProfiles = [.. AllProfiles, "dirty-postcopy"];

    /// <summary>
    /// With --tls every profile also runs as PROFILE+tls (issue 17): Ferry with tls-creds (TLS 1.3, both ends
    /// authenticated, credentials made for the run) and QEMU with a tls-creds-x509 object on each side over the same
    /// directory, in the same invocation as the plain runs.
    /// </summary>
    public const string TlsSuffix = "+tls";

    /// <summary>The profile without its TLS suffix, and whether it had one.</summary>
    public static (string Profile, bool Tls) SplitTls(string profile) =>
        profile.EndsWith(TlsSuffix, StringComparison.Ordinal) ? (profile[..^TlsSuffix.Length], true) : (profile, false);

    /// <summary>The credentials directory of this run's TLS profiles (QEMU's x509 layout); null without --tls.</summary>
    internal static string? TlsCredentials { get; private set; }

    public const int PostcopyDirtyMiBps = 400;
    public const long PostcopyBandwidth = 200L << 20;
    public const int PostcopyAfterPasses = 2;

    private const double MiB = 1 << 20;
    private const double GiB = 1 << 30;

    private static readonly JsonSerializerOptions JsonOptions = new() { WriteIndented = true, Converters = { new JsonStringEnumConverter() } };

    /// <summary>One Ferry migration: what the guest used, the source's statistics, what the destination loaded.</summary>
    internal sealed record FerryRun(
        ulong GuestUsedBytes, ulong GuestBalloonBytes, ulong GuestTotalBytes, double PrepareMs,
        MigrationStats Stats, IncomingReport Incoming, ulong VerifyPagesChecked);

    /// <summary>Everything measured for one size and profile.</summary>
    internal sealed record Row(ulong MemoryGib, string Profile, string QemuProfile, bool QemuHint, List<FerryRun> Ferry, List<Ferry.Qemu.QemuMigrationResult> Qemu)
    {
        public FerryRun FerryMedian => Ferry.OrderBy(r => r.Stats.TotalTimeMs).ElementAt(Ferry.Count / 2);

        public Ferry.Qemu.QemuMigrationResult? QemuMedian => Qemu.Count == 0 ? null : Qemu.OrderBy(r => r.TotalTimeMs).ElementAt(Qemu.Count / 2);
    }

    internal sealed record Report(
        string Command, DateTime StartedUtc, string Host, int Cores, ulong HostRamBytes, string Kernel, string Cpu,
        string? QemuVersion, int Channels, double LoopbackGiBps, long LoopbackBytes, double LoopbackSeconds,
        string GuestCommandLine, int FerryCpus, bool DestinationPrepopulated, bool Verify, long DowntimeLimitMs, int Repeat, List<Row> Rows);

    public static async Task<int> Run(string[] args, ulong[] sizes, string[] profiles, int repeat, long downtimeMs, string guestCommandLine, string? jsonPath,
        int cpus, bool prepopulate, bool verify, bool tls = false)
    {
        foreach (var p in profiles)
        {
            if (!ValidProfiles.Contains(p))
                throw new ArgumentException($"unknown profile '{p}' ({string.Join(", ", ValidProfiles)})");
        }
        using var certificates = tls ? new Ferry.TestSupport.TestCertificates() : null;
        if (certificates is not null)
        {
            TlsCredentials = certificates.Directory();
            profiles = [.. profiles.SelectMany(p => new[] { p, p + TlsSuffix })];
        }
        if (repeat < 1)
            throw new ArgumentException($"--repeat {repeat} must be at least 1");

        var started = DateTime.UtcNow;
        var channels = new MigrationParameters().MultifdChannels;
        var qemuBinary = Ferry.Qemu.QemuGuest.Binary();
        var qemuVersion = qemuBinary is null ? null : Ferry.Qemu.QemuGuest.Version();
        var cpu = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("model name", StringComparison.Ordinal))?.Split(':', 2)[1].Trim() ?? "?";
        var kernel = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        var hostRam = MachineConfig.HostMemoryBytes();
        var command = "Ferry.Bench " + string.Join(' ', args);

        Console.WriteLine($"command: {command}");
        Console.WriteLine($"date: {started:yyyy-MM-dd HH:mm} UTC");
        Console.WriteLine($"machine: {Environment.ProcessorCount} cores ({cpu}), {hostRam / GiB:0.0} GiB RAM, Linux {kernel}, " +
                          (qemuVersion is null ? "QEMU not installed" : $"QEMU {qemuVersion} ({qemuBinary})"));
        Console.WriteLine($"settings: {channels} Ferry channels, downtime-limit {downtimeMs} ms, Ferry guest {cpus} vCPUs (QEMU's: 1, PVH starts only the boot CPU), guest command line '{guestCommandLine}', median of {repeat} by total time" +
                          (prepopulate ? "; DIAGNOSTIC: Ferry's destination RAM pre-populated (MADV_POPULATE_WRITE) before the migration starts, outside the timed part" : "") +
                          (verify ? "; Ferry verified (ferry-verify: digests of every chunk compared before the destination resumes, inside the downtime)" : ""));
        if (qemuVersion is null)
            Console.WriteLine("QEMU not installed: skipped");

        var (ceiling, ceilingBytes, ceilingSeconds) = LoopbackCeiling(channels, TimeSpan.FromSeconds(1.5));
        Console.WriteLine($"loopback TCP ceiling: {channels} connections on 127.0.0.1, 1 MiB writes, 4 MiB socket buffers, {ceilingSeconds:0.00} s: {ceiling:0.00} GiB/s");
        Console.WriteLine();

        var rows = new List<Row>();
        foreach (var size in sizes)
        {
            foreach (var profile in profiles)
            {
                var (plainProfile, withTls) = SplitTls(profile);
                var (qemuProfile, hint) = plainProfile switch
                {
                    "fill-free-hint" => ("fill-free", true),
                    "fill-free-nohint" => ("fill-free", false),
                    _ => (plainProfile, true),
                };
                if (withTls)
                    qemuProfile += TlsSuffix;
                var row = new Row(size, profile, qemuProfile, hint, [], []);
                for (var i = 0; i < repeat; i++)
                {
                    var f = await MeasureFerry(size, profile, downtimeMs, guestCommandLine, cpus, prepopulate, verify);
                    row.Ferry.Add(f);
                    var s = f.Stats;
                    Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss}] {size} GiB {profile} #{i + 1}: Ferry {s.TotalTimeMs:0} ms total, {s.DowntimeMs:0.0} ms down, {s.TransferredBytes / MiB:0.0} MiB sent, setup {s.SetupTimeMs:0} ms, passes {PassList(s)}");
                    if (qemuVersion is not null)
                    {
                        var q = await QemuBench.Measure(size, qemuProfile, hint, downtimeMs);
                        row.Qemu.Add(q);
                        Console.Error.WriteLine($"[{DateTime.Now:HH:mm:ss}] {size} GiB {profile} #{i + 1}: QEMU {q.TotalTimeMs} ms total, {q.DowntimeMs} ms down, {q.TransferredBytes / MiB:0.0} MiB sent");
                    }
                }
                rows.Add(row);
            }
        }

        Console.WriteLine();
        PrintTables(rows, ceiling, repeat);
        if (verify)
            PrintVerify(rows);
        if (rows.Any(r => r.Profile == "dirty-postcopy"))
            PrintPostcopy(rows.Where(r => r.Profile == "dirty-postcopy").ToList());
        if (TlsCredentials is not null)
            PrintTls(rows);

        if (jsonPath is not null)
        {
            var report = new Report(command, started, Environment.MachineName, Environment.ProcessorCount, hostRam, kernel, cpu, qemuVersion,
                channels, ceiling, ceilingBytes, ceilingSeconds, guestCommandLine, cpus, prepopulate, verify, downtimeMs, repeat, rows);
            await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(report, JsonOptions));
            Console.WriteLine($"raw runs written to {jsonPath}");
        }
        return 0;
    }

    /// <summary>With --verify: where the downtime went, the source's digest phase and the destination's comparing.</summary>
    private static void PrintVerify(List<Row> rows)
    {
        Console.WriteLine();
        Console.WriteLine("Verification (ferry-verify), the same median runs: the source's digests are the `verify` downtime phase; the destination's comparing is inside `complete` (its time summed over the channels).");
        Console.WriteLine();
        Console.WriteLine("| size | profile | downtime ms | pause | dirty sync | final pass | verify (source) | save state | complete | chunks | destination comparing ms (all channels) | source GiB/s hashed |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var s = row.FerryMedian.Stats;
            var d = s.Downtime;
            var hashed = s.VerifiedChunks * 2.0 / 1024;
            var rate = d is { VerifyMs: > 0 } ? $"{hashed / (d.VerifyMs / 1000):0.00}" : "-";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"| {row.MemoryGib} GiB | {row.Profile} | {s.DowntimeMs:0.0} | {d?.PauseMs:0.0} | {d?.SyncMs:0.0} | {d?.FinalPassMs:0.0} | {d?.VerifyMs:0.0} | {d?.SaveStateMs:0.0} | {d?.CompleteMs:0.0} | {s.VerifiedChunks} | {row.FerryMedian.Incoming.VerifyMs:0.0} | {rate} (at most; holes are not read) |"));
        }
    }

    /// <summary>With --tls: what TLS costs each VMM, per profile (the same median runs; target: Ferry at most 1.3x, and not more than QEMU's).</summary>
    private static void PrintTls(List<Row> rows)
    {
        static string Ratio(double a, double b) => b > 0 ? string.Create(CultureInfo.InvariantCulture, $"{a / b:0.00}x") : "-";
        Console.WriteLine();
        Console.WriteLine("TLS (tls-creds: TLS 1.3 for Ferry, QEMU's tls-creds-x509; both ends authenticated; the same median runs):");
        Console.WriteLine();
        Console.WriteLine("| size | profile | Ferry plain ms | Ferry TLS ms | Ferry TLS/plain | QEMU plain ms | QEMU TLS ms | QEMU TLS/plain |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|");
        foreach (var tlsRow in rows.Where(r => SplitTls(r.Profile).Tls))
        {
            var plain = rows.FirstOrDefault(r => r.MemoryGib == tlsRow.MemoryGib && r.Profile == SplitTls(tlsRow.Profile).Profile);
            if (plain is null)
                continue;
            double fp = plain.FerryMedian.Stats.TotalTimeMs, ft = tlsRow.FerryMedian.Stats.TotalTimeMs;
            var qemu = plain.QemuMedian is { } qp && tlsRow.QemuMedian is { } qt
                ? $"{qp.TotalTimeMs} | {qt.TotalTimeMs} | {Ratio(qt.TotalTimeMs, qp.TotalTimeMs)} |"
                : "- | - | - |";
            Console.WriteLine(string.Create(CultureInfo.InvariantCulture, $"| {tlsRow.MemoryGib} GiB | {plain.Profile} | {fp:0} | {ft:0} | {Ratio(ft, fp)} | {qemu}"));
        }
    }

    /// <summary>The postcopy profile's own figures, Ferry beside QEMU (the same median runs).</summary>
    private static void PrintPostcopy(List<Row> rows)
    {
        Console.WriteLine();
        Console.WriteLine($"Postcopy (dirty-postcopy: `dirty {PostcopyDirtyMiBps} 1024` against max-bandwidth {PostcopyBandwidth >> 20} MiB/s, switch after {PostcopyAfterPasses} passes; the same median runs). Ferry's fault latency is from a vCPU blocking to its page placed; QEMU's postcopy-latency is printed as QEMU reports it (10.1 and later).");
        Console.WriteLine();
        Console.WriteLine("| size | Ferry owed pages | Ferry requests | Ferry urgent / background pages | Ferry blocktime ms | Ferry fault p50 / p99 µs | QEMU switched | QEMU requests | QEMU blocktime ms | QEMU postcopy-latency |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var p = row.FerryMedian.Stats.Postcopy;
            var q = row.QemuMedian;
            var ferry = p is null
                ? "- (converged as precopy) | - | - | - | - | "
                : string.Create(CultureInfo.InvariantCulture, $"{p.OwedPages} | {p.Requests} | {p.UrgentPages} / {p.BackgroundPages} | {p.BlocktimeMs:0.0} | {p.LatencyP50Us:0} / {p.LatencyP99Us:0} | ");
            var qemu = q is null ? "- | - | - | - |" : $"{(q.Postcopy ? "yes" : "no")} | {q.PostcopyRequests} | {(q.PostcopyBlocktimeMs >= 0 ? q.PostcopyBlocktimeMs.ToString(CultureInfo.InvariantCulture) : "-")} | {(q.PostcopyLatencyRaw >= 0 ? q.PostcopyLatencyRaw.ToString(CultureInfo.InvariantCulture) : "-")} |";
            Console.WriteLine($"| {row.MemoryGib} GiB | {ferry}{qemu}");
        }
    }

    private static string PassList(MigrationStats s) =>
        string.Join(" + ", s.Passes.Select(p => $"{p.DurationMs:0.#}")) + " ms";

    private static void PrintTables(List<Row> rows, double ceiling, int repeat)
    {
        static string Ratio(double a, double b) => b > 0 ? $"{a / b:0.00}x" : "-";

        Console.WriteLine($"Median of {repeat} by total time (each side chooses its own median run); loopback ceiling {ceiling:0.00} GiB/s.");
        Console.WriteLine();
        Console.WriteLine("| size | profile | guest uses MiB | Ferry total ms | Ferry downtime ms | Ferry sent MiB | QEMU total ms | QEMU downtime ms | QEMU sent MiB | time Ferry/QEMU | bytes Ferry/QEMU | Ferry GiB/s vs loopback ceiling |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var f = row.FerryMedian;
            var s = f.Stats;
            var q = row.QemuMedian;
            var used = (f.GuestUsedBytes - f.GuestBalloonBytes) / MiB;
            var gibps = s.TotalTimeMs > 0 ? s.TransferredBytes / GiB / (s.TotalTimeMs / 1000) : 0;
            var sb = new StringBuilder();
            sb.Append(CultureInfo.InvariantCulture, $"| {row.MemoryGib} GiB | {row.Profile} | {used:0.0} | {s.TotalTimeMs:0} | {s.DowntimeMs:0.0} | {s.TransferredBytes / MiB:0.0} | ");
            if (q is null)
                sb.Append("- | - | - | - | - | ");
            else
                sb.Append(CultureInfo.InvariantCulture, $"{q.TotalTimeMs} | {q.DowntimeMs} | {q.TransferredBytes / MiB:0.0} | {Ratio(s.TotalTimeMs, q.TotalTimeMs)} | {Ratio(s.TransferredBytes, q.TransferredBytes)} | ");
            sb.Append(CultureInfo.InvariantCulture, $"{gibps:0.00} ({100 * gibps / ceiling:0}%) |");
            Console.WriteLine(sb.ToString());
        }
        Console.WriteLine();
        Console.WriteLine("Ferry's page classes and passes (the same median runs). Pass times are RAM passes; setup includes connecting, the first dirty-log sync and the wait for the guest's free page hints; the last pass runs with the guest paused.");
        Console.WriteLine();
        Console.WriteLine("| size | profile | normal | zero | untouched | ballooned | hinted | setup ms | passes (ms each) | pass-1 GiB/s | channels | verify pages |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|---|");
        foreach (var row in rows)
        {
            var f = row.FerryMedian;
            var s = f.Stats;
            var first = s.Passes.Count > 0 ? s.Passes[0] : null;
            var firstRate = first is { DurationMs: > 0 } ? first.Bytes / GiB / (first.DurationMs / 1000) : 0;
            Console.WriteLine($"| {row.MemoryGib} GiB | {row.Profile} | {s.NormalPages} | {s.ZeroPages} | {s.UntouchedPages} | {s.BalloonedPages} | {s.HintedPages} | {s.SetupTimeMs:0} | {s.Passes.Count}: {PassList(s)} | {firstRate:0.00} | {s.Channels} | {f.VerifyPagesChecked} |");
        }
        if (rows.Any(r => r.Qemu.Count > 0))
        {
            Console.WriteLine();
            Console.WriteLine("QEMU's side (the same median runs):");
            Console.WriteLine();
            Console.WriteLine("| size | profile | QEMU profile | hint | setup ms | zero pages | normal pages | dirty syncs | mbps |");
            Console.WriteLine("|---|---|---|---|---|---|---|---|---|");
            foreach (var row in rows)
            {
                if (row.QemuMedian is { } q)
                    Console.WriteLine($"| {row.MemoryGib} GiB | {row.Profile} | {row.QemuProfile} | {(row.QemuHint ? "on" : "off")} | {q.SetupTimeMs} | {q.ZeroPages} | {q.NormalPages} | {q.DirtySyncCount} | {q.Mbps:0} |");
            }
        }
    }

    /// <summary>
    /// The loopback TCP ceiling: <paramref name="connections"/> connections on 127.0.0.1 (4 MiB socket buffers and
    /// Nagle off, as Ferry's TCP channels), each sending 1 MiB writes as fast as it can for <paramref name="duration"/>
    /// while its receiver discards. Returns GiB/s received over the whole run (until the last receiver saw EOF).
    /// </summary>
    internal static (double GiBps, long Bytes, double Seconds) LoopbackCeiling(int connections, TimeSpan duration)
    {
        const int bufferBytes = 4 << 20;
        using var listener = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
        listener.ReceiveBufferSize = bufferBytes; // inherited by accepted sockets
        listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        listener.Listen(connections);
        var endpoint = (IPEndPoint)listener.LocalEndPoint!;

        var senders = new List<Socket>();
        var receivers = new List<Socket>();
        try
        {
            for (var i = 0; i < connections; i++)
            {
                var client = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp)
                {
                    NoDelay = true,
                    SendBufferSize = bufferBytes,
                    ReceiveBufferSize = bufferBytes,
                };
                senders.Add(client);
                client.Connect(endpoint);
                var server = listener.Accept();
                server.NoDelay = true;
                server.SendBufferSize = bufferBytes;
                server.ReceiveBufferSize = bufferBytes;
                receivers.Add(server);
            }

            var received = new long[connections];
            var clock = Stopwatch.StartNew();
            var threads = new List<Thread>();
            for (var i = 0; i < connections; i++)
            {
                var index = i;
                var sender = new Thread(() =>
                {
                    var data = new byte[1 << 20];
                    Random.Shared.NextBytes(data);
                    while (clock.Elapsed < duration)
                        senders[index].Send(data);
                    senders[index].Shutdown(SocketShutdown.Send);
                })
                { Name = $"loopback-send-{i}", IsBackground = true };
                var receiver = new Thread(() =>
                {
                    var sink = new byte[1 << 20];
                    int n;
                    long total = 0;
                    while ((n = receivers[index].Receive(sink)) > 0)
                        total += n;
                    received[index] = total;
                })
                { Name = $"loopback-receive-{i}", IsBackground = true };
                threads.Add(sender);
                threads.Add(receiver);
            }
            foreach (var t in threads)
                t.Start();
            foreach (var t in threads)
                t.Join();
            var seconds = clock.Elapsed.TotalSeconds;
            var bytes = received.Sum();
            return (bytes / GiB / seconds, bytes, seconds);
        }
        finally
        {
            foreach (var s in senders.Concat(receivers))
                s.Dispose();
        }
    }

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

    /// <summary>
    /// Boots a 2-vCPU source guest, prepares <paramref name="profile"/> as <see cref="QemuBench.Measure"/> does,
    /// migrates it to a fresh paused machine over loopback TCP and checks the destination with `verify`.
    /// </summary>
    internal static async Task<FerryRun> MeasureFerry(ulong memoryGib, string profileName, long downtimeMs, string guestCommandLine, int cpus, bool prepopulate, bool verifyMigration = false)
    {
        var (profile, tls) = SplitTls(profileName);
        var config = new MachineConfig
        {
            MemoryBytes = memoryGib << 30,
            Cpus = cpus,
            GuestImagePath = GuestImageLocator.Locate(),
            CommandLine = guestCommandLine,
            Balloon = true,
        };
        var console = new GuestConsole();
        using var source = GuestMachine.Create(config, console);
        source.Start();
        var readyTask = console.WaitForEventAsync("ready", Guest.Timeout);
        if (await Task.WhenAny(readyTask, source.Exited) != readyTask)
            throw new InvalidOperationException($"the source guest stopped before it was ready: {source.Exited.Result.Message}");
        var ready = await readyTask;
        var balloon = source.Balloon ?? throw new InvalidOperationException("the source machine has no balloon");
        await WaitFor(() => balloon.DriverReady, "the source's balloon driver");

        var prepare = Stopwatch.StartNew();
        var usableMib = ready.GetProperty("usable_bytes").GetUInt64() >> 20;
        switch (profile)
        {
            case "idle-fresh":
                break;
            case "fill-free-hint":
            case "fill-free-nohint":
                await Guest.Cmd(console, $"fill {usableMib * 6 / 10}");
                await Guest.Cmd(console, "free");
                break;
            case "fill-keep":
                await Guest.Cmd(console, $"fill {usableMib * 6 / 10}");
                break;
            case "balloon10":
                var target = (uint)(config.MemoryBytes / 4096 * 9 / 10);
                balloon.SetTargetPages(target);
                await WaitFor(() => balloon.ActualPages == target, $"the balloon to reach {target} pages");
                break;
            case "dirty":
                await Guest.Cmd(console, "dirty 200 1024");
                await Task.Delay(500);
                break;
            case "dirty-postcopy":
                await Guest.Cmd(console, $"dirty {PostcopyDirtyMiBps} 1024");
                await Task.Delay(500);
                break;
            default:
                throw new ArgumentException($"unknown profile '{profile}'");
        }
        var prepareMs = prepare.Elapsed.TotalMilliseconds;
        var stats0 = await Guest.Cmd(console, "stats");
        var used = stats0.GetProperty("used_bytes").GetUInt64();
        var ballooned = stats0.GetProperty("balloon_bytes").GetUInt64();
        var total = stats0.GetProperty("total_bytes").GetUInt64();

        var destConsole = new GuestConsole();
        using var destination = GuestMachine.Create(config, destConsole);
        destination.Start(paused: true);
        if (prepopulate)
        {
            // Diagnostic only: takes the destination's first-touch page allocation out of the timed migration.
            foreach (var block in destination.Memory.Blocks)
                Ferry.Interop.ErrnoException.Check(Ferry.Interop.Libc.Madvise(block.Mapping.Address, (nuint)block.Size, 23), "madvise(MADV_POPULATE_WRITE)");
        }
        MigrationStats stats;
        IncomingReport incoming;
        var tcp = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        using var serverTls = tls ? MigrationTls.Load(TlsCredentials!, TlsEndpoint.Server) : null;
        using var clientTls = tls ? MigrationTls.Load(TlsCredentials!, TlsEndpoint.Client) : null;
        IChannelConnector connector = new TcpChannelConnector(tcp.Uri);
        if (clientTls is not null)
            connector = new TlsChannelConnector(connector, clientTls, "localhost");
        using (IChannelListener listener = serverTls is null ? tcp : new TlsChannelListener(tcp, serverTls))
        {
            var receive = Task.Run(() => MigrationReceiver.Receive(new MachineMigrationTarget(destination), listener, CancellationToken.None));
            var postcopy = profile == "dirty-postcopy";
            using var migration = new PrecopyMigration(
                new MachineMigrationSource(source),
                postcopy
                    ? new MigrationParameters { DowntimeLimitMs = downtimeMs, MaxBandwidth = PostcopyBandwidth, PostcopyAfterPasses = PostcopyAfterPasses }
                    : new MigrationParameters { DowntimeLimitMs = downtimeMs },
                new MigrationCapabilities { FreePageHint = profile != "fill-free-nohint", Verify = verifyMigration && !postcopy, PostcopyRam = postcopy });
            try
            {
                stats = migration.Run(connector);
            }
            catch
            {
                listener.Dispose(); // the receiver may still wait for a channel
                throw;
            }
            incoming = await receive;
        }
        source.Stop(ShutdownCause.HostQmpQuit, "migrated");

        if (profile is "dirty" or "dirty-postcopy")
            await Guest.Cmd(destConsole, "stop");
        var verify = await Guest.Cmd(destConsole, "verify");
        if (!verify.GetProperty("passed").GetBoolean())
            throw new InvalidOperationException($"verify failed on the Ferry destination ({memoryGib} GiB {profileName}): {verify}");
        return new FerryRun(used, ballooned, total, prepareMs, stats, incoming, verify.GetProperty("pages_checked").GetUInt64());
    }
}
