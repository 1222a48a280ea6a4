using System.Text.Json.Nodes;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;

namespace Ferry.Control;

/// <summary>
/// QMP migration commands with QEMU's names and shapes: migrate (tcp:, unix:, exec:, and file: with mapped-ram),
/// migrate-incoming, query-migrate (either side), migrate_cancel, migrate-set-parameters /
/// query-migrate-parameters, migrate-set-capabilities / query-migrate-capabilities, and the MIGRATION and
/// MIGRATION_PASS events (only with the events capability, as QEMU). Ferry-only parameters, capabilities and fields
/// are prefixed `ferry-`. When a migration completes, the source stays paused in postmigrate until quit (QEMU),
/// or, with <c>exitAfterMigration</c>, ends (`ferry run --exit-after-migration`, for scripts).
/// </summary>
public sealed class MigrationCommands
{
    private readonly IMigratableMachine _machine;
    private readonly bool _exitAfterMigration;
    private readonly object _gate = new();
    private readonly MigrationSettingsCommands _settings;
    private QmpServer? _server;
    private PrecopyMigration? _current;
    private MigrationStats? _last;

    /// <param name="exitAfterMigration">End the machine once a migration completed, instead of leaving it in postmigrate.</param>
    public MigrationCommands(IMigratableMachine machine, bool exitAfterMigration = false)
    {
        _machine = machine;
        _exitAfterMigration = exitAfterMigration;
        _settings = new MigrationSettingsCommands(_gate, () => _current);
        Incoming = new IncomingMigration(machine, (status, capabilities) => EmitStatus(status, capabilities));
    }

    /// <summary>The destination side (migrate-incoming, `ferry run --incoming`).</summary>
    public IncomingMigration Incoming { get; }

    /// <summary>The parameters and capabilities in force (what the next migration, outgoing or incoming, uses).</summary>
    public MigrationSettingsCommands Settings => _settings;

    /// <summary>The last finished migration's statistics (null before one finished).</summary>
    public MigrationStats? LastResult
    {
        get
        {
            lock (_gate)
                return _last;
        }
    }

    /// <summary>Registers the commands and events on <paramref name="server"/>; events are emitted there from now on.</summary>
    public void Register(QmpServer server)
    {
        ArgumentNullException.ThrowIfNull(server);
        _server = server;
        server.DeclareEvent("MIGRATION", MigrationEventData);
        server.DeclareEvent("MIGRATION_PASS", new QmpObjectType("q_obj_MIGRATION_PASS-arg", [new("pass", QmpType.Int)]));
        // query-migrate's result is declared as "any": its Ferry extras are richer than is worth declaring twice.
        server.Register("migrate", QmpArgumentsContext.Default.MigrateArguments, QmpObjectType.Empty, Migrate);
        server.Register("migrate-incoming", QmpArgumentsContext.Default.MigrateIncomingArguments, QmpObjectType.Empty, MigrateIncoming);
        server.Register("query-migrate", QmpType.Any, Query);
        server.Register("migrate_cancel", QmpObjectType.Empty, () =>
        {
            Current()?.Cancel();
            return null;
        });
        server.Register("ferry-snapshot-save", QmpArgumentsContext.Default.SnapshotSaveArguments, QmpObjectType.Empty, SnapshotSave);
        PostcopyCommands.Register(server, Current);
        PostcopyCommands.RegisterIncoming(server, Incoming.Postcopy, uri => MigrationTransports.Listen(uri, _settings.Parameters));
        _settings.Register(server);
    }

    private PrecopyMigration? Current()
    {
        lock (_gate)
            return _current;
    }

    /// <summary>MIGRATION's data: QEMU's "status", plus Ferry's target and final figures on the last one of an outgoing migration.</summary>
    private static readonly QmpObjectType MigrationEventData = new("q_obj_MIGRATION-arg",
        [new("status", QmpType.Str), new("ferry-target", QmpType.Str, Optional: true), new("ferry-info", QmpType.Any, Optional: true)]);

    /// <summary>MIGRATION, when the migration's capabilities have events (QEMU emits none without).</summary>
    private void Emit(MigrationCapabilities capabilities, string name, JsonObject data)
    {
        if (capabilities.Events)
            _server?.Emit(name, data);
    }

    private void EmitStatus(MigrationStatus status, MigrationCapabilities capabilities) =>
        Emit(capabilities, "MIGRATION", new JsonObject { ["status"] = status.ToQmp() });

    private JsonNode? Migrate(MigrateArguments args)
    {
        // QEMU's block migration does not exist in Ferry; refused rather than ignored.
        if (args.Blk == true || args.Inc == true)
            throw new QmpException(QmpException.GenericError, "Parameter 'blk'/'inc': block migration is not supported by Ferry");
        if (args.Resume == true)
            return PostcopyCommands.Resume(Current(), ParseUri(args.Uri), _settings.Parameters);
        var uri = ParseUri(args.Uri);
        var (parameters, capabilities) = (_settings.Parameters, _settings.Capabilities);
        if (MigrationTransports.CheckOutgoing(uri, parameters, capabilities) is { } refused)
            throw new QmpException(QmpException.GenericError, refused);
        if (uri.Kind == MigrationUriKind.File)
        {
            // QEMU's migrate to a file with mapped-ram: a migration whose target is the snapshot file. Unlike
            // ferry-snapshot-save the guest does not run on here: it ends paused (postmigrate), as after any migration.
            var path = uri.Path;
            StartJob(uri.ToString(), CreateSnapshotOutput(path, "uri", sourceRunsOn: false),
                source => MachineSnapshots.CreateSave(source, parameters, capabilities),
                isMigration: true,
                completed => MachineSnapshots.Commit(path, completed));
            return null;
        }
        IChannelConnector connector;
        try
        {
            connector = MigrationTransports.Connect(uri, parameters);
        }
        catch (MigrationTlsException e)
        {
            throw new QmpException(QmpException.GenericError, e.Message);
        }
        StartJob(uri.ToString(), new ChannelOutput(connector, parameters, capabilities),
            source => new PrecopyMigration(source, parameters, capabilities),
            isMigration: true);
        return null;
    }

    internal static MigrationUri ParseUri(string text)
    {
        try
        {
            return MigrationUri.Parse(text);
        }
        catch (FormatException e)
        {
            throw new QmpException(QmpException.GenericError, e.Message);
        }
    }

    /// <summary>
    /// migrate-incoming {"uri": URI, "exit-on-error": bool}: on a destination started with `--incoming defer`,
    /// starts the incoming migration with the parameters and capabilities set on it so far (QEMU's flow).
    /// </summary>
    private JsonNode? MigrateIncoming(MigrateIncomingArguments args)
    {
        var uri = ParseUri(args.Uri);
        try
        {
            Incoming.Start(uri, _settings.Parameters, _settings.Capabilities, args.ExitOnError ?? true);
        }
        catch (IncomingRefusedException e)
        {
            throw new QmpException(QmpException.GenericError, e.Message);
        }
        return null;
    }

    /// <summary>
    /// ferry-snapshot-save {"file": PATH, "paused": bool}: precopy into a fixed-offset snapshot file. A running
    /// guest runs on afterwards; with "paused" (or when already paused) the guest is stopped first, saved in one
    /// pass, and stays paused. Progress and result through query-migrate and MIGRATION events, as for migrate.
    /// </summary>
    private JsonNode? SnapshotSave(SnapshotSaveArguments args)
    {
        var path = args.File.Length > 0 ? args.File : throw new QmpException(QmpException.GenericError, "Parameter 'file' is empty");
        var output = CreateSnapshotOutput(path, "file", sourceRunsOn: true);
        if (args.Paused == true)
        {
            try
            {
                QmpException.Relay(_machine.PauseGuest);
            }
            catch
            {
                output.Dispose();
                throw;
            }
        }
        var (parameters, capabilities) = (_settings.Parameters, _settings.Capabilities);
        // The engine resumes a running guest itself once its state is in the file, before the final sync.
        StartJob($"file:{path}", output,
            source => MachineSnapshots.CreateSave(source, parameters, capabilities),
            isMigration: false,
            completed => MachineSnapshots.Commit(path, completed));
        return null;
    }

    /// <summary>The snapshot file output for <paramref name="path"/>, refused with QMP's text naming <paramref name="member"/> when it cannot be made.</summary>
    private static Migration.Snapshot.SnapshotOutput CreateSnapshotOutput(string path, string member, bool sourceRunsOn)
    {
        var directory = Path.GetDirectoryName(Path.GetFullPath(path));
        if (directory is null || !Directory.Exists(directory))
            throw new QmpException(QmpException.GenericError, $"Parameter '{member}': directory of '{path}' does not exist");
        try
        {
            return MachineSnapshots.Output(path, sourceRunsOn);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // .NET's text would reach the client; the path and the kind of failure say enough.
            throw new QmpException(QmpException.GenericError, $"Parameter '{member}': cannot create '{path}' ({(e is UnauthorizedAccessException ? "permission denied" : "I/O error")})");
        }
    }

    /// <summary>
    /// Runs one migration job on its own thread; one job at a time. After a completed migration
    /// (<paramref name="isMigration"/>) the guest runs elsewhere: the source is postmigrate before the final event
    /// goes out, or with --exit-after-migration it ends right after that event (which carries the figures).
    /// </summary>
    /// <param name="afterOutput">Runs once the output is closed, with whether the job completed (e.g. a snapshot file's rename).</param>
    private void StartJob(string target, IMigrationOutput output, Func<IMigrationSource, PrecopyMigration> create, bool isMigration, Action<bool>? afterOutput = null)
    {
        var status = _machine.Status;
        if (status is MachineStatus.Shutdown or MachineStatus.InMigrate)
        {
            output.Dispose();
            throw new QmpException(QmpException.GenericError, status == MachineStatus.Shutdown
                ? "the VM has stopped; there is nothing to migrate"
                : "Guest is waiting for an incoming migration");
        }
        PrecopyMigration migration;
        MigrationCapabilities capabilities;
        lock (_gate)
        {
            if (_current is not null)
            {
                output.Dispose();
                throw new QmpException(QmpException.GenericError, "There's a migration process in progress");
            }
            migration = create(_machine.CreateMigrationSource());
            capabilities = _settings.Capabilities;
            _current = migration;
        }
        // A final status is announced once, below, with the figures (and the snapshot's own outcome).
        migration.StatusChanged += status =>
        {
            if (!status.IsFinal())
                EmitStatus(status, capabilities);
        };
        migration.PassCompleted += pass => Emit(capabilities, "MIGRATION_PASS", new JsonObject { ["pass"] = pass.Pass });
        var thread = new Thread(() =>
        {
            MigrationStats result;
            try
            {
                result = migration.Run(output);
            }
            catch (MigrationException)
            {
                result = migration.Snapshot();
            }
            finally
            {
                output.Dispose();
            }
            if (afterOutput is not null)
            {
                try
                {
                    afterOutput(result.Status == MigrationStatus.Completed);
                }
                catch (IOException e)
                {
                    result = result with { Status = MigrationStatus.Failed, Error = $"finishing {target}: {e.Message}" };
                }
            }
            lock (_gate)
            {
                _last = result;
                _current = null;
            }
            migration.Dispose();
            var migrated = isMigration && result.Status == MigrationStatus.Completed;
            if (migrated && !_exitAfterMigration)
                _machine.MarkPaused(MachineStatus.PostMigrate);
            var source = _server is null ? "" : $"unix:{_server.SocketPath}";
            Emit(capabilities, "MIGRATION", new JsonObject { ["status"] = result.Status.ToQmp(), ["ferry-target"] = target, ["ferry-info"] = MigrationJson.ToReport(result, source, target, _settings.Parameters) });
            if (migrated && _exitAfterMigration)
                _machine.EndMachine(ShutdownCause.HostQmpQuit, $"migrated to {target}; exiting (--exit-after-migration)");
        })
        { Name = "migration", IsBackground = true };
        thread.Start();
    }

    /// <summary>The outgoing migration when there is or was one (QEMU: the source's state wins), else the incoming one, else {}.</summary>
    private JsonObject Query()
    {
        PrecopyMigration? current;
        MigrationStats? last;
        lock (_gate)
        {
            current = _current;
            last = _last;
        }
        var stats = current?.Snapshot() ?? last;
        if (stats is not null)
            return MigrationJson.ToQmp(stats, passes: false);
        return Incoming.Query();
    }
}

/// <summary>Migration statistics in query-migrate's shape (QEMU's field names), with Ferry's extras under "ferry".</summary>
public static class MigrationJson
{
    /// <summary>Phases in order, each in milliseconds to the microsecond (setup and downtime use the same shape).</summary>
    private static JsonObject Phases(params (string Name, double Ms)[] phases)
    {
        var json = new JsonObject();
        foreach (var (name, ms) in phases)
            json[name] = Math.Round(ms, 3);
        return json;
    }

    /// <summary>
    /// The final report: the MIGRATION event's ferry-info, which `--report` writes as JSON and as HTML. ToQmp with
    /// every pass, plus where it ran from and to and under what limits: ferry.source (the source's QMP socket,
    /// unix:PATH), ferry.target (tcp:HOST:PORT or file:PATH), ferry.max-bandwidth and ferry.downtime-limit (the
    /// parameters when it ended).
    /// </summary>
    public static JsonObject ToReport(MigrationStats s, string source, string target, MigrationParameters parameters)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        var report = ToQmp(s, passes: true);
        var ferry = (JsonObject)report["ferry"]!;
        ferry["source"] = source;
        ferry["target"] = target;
        ferry["max-bandwidth"] = parameters.MaxBandwidth;
        ferry["downtime-limit"] = parameters.DowntimeLimitMs;
        return report;
    }

    public static JsonObject ToQmp(MigrationStats s, bool passes)
    {
        var result = new JsonObject
        {
            ["status"] = s.Status.ToQmp(),
            ["total-time"] = (long)s.TotalTimeMs,
            ["setup-time"] = (long)s.SetupTimeMs,
            ["expected-downtime"] = (long)s.ExpectedDowntimeMs,
            ["ram"] = new JsonObject
            {
                ["transferred"] = s.TransferredBytes,
                ["remaining"] = s.RemainingBytes,
                ["total"] = s.TotalBytes,
                ["duplicate"] = s.ZeroPages,
                ["normal"] = s.NormalPages,
                ["normal-bytes"] = s.NormalPages * (long)Page.Size,
                ["dirty-sync-count"] = s.DirtySyncCount,
                ["dirty-pages-rate"] = (long)s.DirtyPagesRate,
                ["mbps"] = Math.Round(s.Mbps, 3),
                ["pages-per-second"] = (long)s.PagesPerSecond,
                ["precopy-bytes"] = s.PrecopyBytes,
                ["downtime-bytes"] = s.DowntimeBytes,
                ["page-size"] = (int)Page.Size,
            },
        };
        if (s.DowntimeMs is { } downtime)
            result["downtime"] = (long)Math.Ceiling(downtime);
        if (s.ThrottlePercent > 0)
            result["cpu-throttle-percentage"] = s.ThrottlePercent;
        if (s.Error is not null)
            result["error-desc"] = s.Error;
        if (s.ErrorKind is { } kind)
            result["ferry-error-kind"] = MigrationQmpText.ErrorKind(kind);
        var ferry = new JsonObject
        {
            ["channels"] = s.Channels,
            ["skipped-untouched"] = s.UntouchedPages,
            ["skipped-ballooned"] = s.BalloonedPages,
            ["skipped-hinted"] = s.HintedPages,
            ["ballooned-sent"] = s.BalloonedPagesSent,
            ["balloon-skip"] = MigrationQmpText.BalloonSkip(s.BalloonSkip),
            ["free-page-hint"] = MigrationQmpText.FreePageHint(s),
            ["downtime-exact-ms"] = s.DowntimeMs is { } d ? Math.Round(d, 3) : null,
            ["total-time-exact-ms"] = Math.Round(s.TotalTimeMs, 3),
        };
        if (s.DestinationMayBeRunning)
            ferry["destination-may-be-running"] = true;
        if (s.VerifiedChunks > 0)
            ferry["verified-chunks"] = s.VerifiedChunks;
        if (s.NotConverging is not null)
            ferry["not-converging"] = MigrationQmpText.NotConverging(s.NotConverging);
        if (s.Postcopy is { } postcopy)
            PostcopyCommands.AddStats(result, ferry, postcopy);
        if (s.Setup is { } setup)
        {
            ferry["setup-phases-ms"] = Phases(("open", setup.OpenMs), ("prepare-state", setup.PrepareStateMs), ("dirty-logging", setup.DirtyLoggingMs),
                ("extents", setup.ExtentsMs), ("balloon", setup.BalloonMs), ("hint-wait", setup.HintWaitMs));
        }
        if (s.Downtime is { } phases)
        {
            ferry["downtime-phases-ms"] = Phases(("pause", phases.PauseMs), ("dirty-sync", phases.SyncMs), ("final-pass", phases.FinalPassMs),
                ("verify", phases.VerifyMs), ("save-state", phases.SaveStateMs), ("complete", phases.CompleteMs), ("resume", phases.ResumeMs));
        }
        if (passes)
        {
            var list = new JsonArray();
            foreach (var p in s.Passes)
            {
                list.Add((JsonNode)new JsonObject
                {
                    ["pass"] = p.Pass,
                    ["duration-ms"] = Math.Round(p.DurationMs, 3),
                    ["bytes"] = p.Bytes,
                    ["normal"] = p.NormalPages,
                    ["duplicate"] = p.ZeroPages,
                    ["skipped-hinted"] = p.HintedPages,
                    ["skipped-ballooned"] = p.BalloonedPages,
                    ["dirty-pages-after"] = p.DirtyPagesAfter,
                    ["dirty-pages-rate"] = Math.Round(p.DirtyPagesPerSecond),
                    ["bandwidth-bytes-per-second"] = Math.Round(p.BandwidthBytesPerSecond),
                    ["expected-downtime-ms"] = Math.Round(p.ExpectedDowntimeMs, 3),
                    ["cpu-throttle-percentage"] = p.ThrottlePercent,
                });
            }
            ferry["passes"] = list;
        }
        result["ferry"] = ferry;
        return result;
    }
}
