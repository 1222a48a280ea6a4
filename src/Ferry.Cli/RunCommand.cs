using System.CommandLine;
using System.Runtime.InteropServices;
using Ferry.Control;
using Ferry.Interop;
using Ferry.Machine;
using Ferry.Kvm;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;
using Microsoft.Extensions.Logging;

namespace Ferry.Cli;

/// <summary>`ferry run`: boots a guest (or loads one from --incoming or --restore) and runs it until it stops.</summary>
internal static partial class RunCommand
{
    /// <summary>The options a machine is built from (`run` and `demo`).</summary>
    internal sealed class MachineOptions(string defaultMemory, long defaultCpus)
    {
        public readonly Option<ulong?> Memory = CliOptions.Size("--memory", $"guest RAM, a multiple of 2 MiB (default {defaultMemory}; e.g. 512M, 1.5G, 8G; a bare number is MiB)");
        public readonly Option<long?> Cpus = CliOptions.Positive("--cpus", "N", $"vCPUs (default {defaultCpus})");
        public readonly Option<string?> Guest = CliOptions.Text("--guest", "PATH", "guest image (default: the one built from guest/)");
        public readonly Option<string?> Cmdline = CliOptions.Text("--cmdline", "TEXT", "guest command line (e.g. \"free_mode=poison poison=0xaa\")");
        public readonly Option<RamBackend?> MemoryBackend = new("--memory-backend")
        {
            HelpName = "memfd|anon",
            Description = "what guest RAM is made of: memfd (default; shared memory) or anon (private anonymous memory on 2 MiB huge pages, as QEMU)",
            CustomParser = r => CliOptions.Parsed(r, t => MachineConfig.ParseMemoryBackend(t)),
        };

        public void AddTo(Command command)
        {
            command.Options.Add(Memory);
            command.Options.Add(Cpus);
            command.Options.Add(Guest);
            command.Options.Add(Cmdline);
            command.Options.Add(MemoryBackend);
        }

        public MachineConfig Parse(ParseResult parse) => new()
        {
            MemoryBytes = parse.GetValue(Memory) ?? MachineConfig.ParseSize(defaultMemory, "--memory"),
            Cpus = (int)Math.Min(parse.GetValue(Cpus) ?? defaultCpus, int.MaxValue),
            GuestImagePath = parse.GetValue(Guest) ?? GuestImageLocator.Locate(),
            CommandLine = parse.GetValue(Cmdline) ?? "",
            MemoryBackend = parse.GetValue(MemoryBackend) ?? MachineConfig.DefaultMemoryBackend(),
        };
    }

    public static Command Build()
    {
        var machine = new MachineOptions("512M", 1);
        var console = CliOptions.Text("--console", "SPEC", "the guest console: stdio (default) or unix:PATH");
        var qmp = CliOptions.Text("--qmp", "unix:PATH", "serve the QMP control socket there");
        var incoming = CliOptions.Text("--incoming", "URI|defer",
            "do not boot: wait for a migration on tcp:HOST:PORT, unix:PATH or exec:COMMAND, load it, run the guest (same --memory and --cpus as the source); " +
            "defer: wait for QMP migrate-incoming, after migrate-set-parameters/-capabilities (needs --qmp)");
        var exitAfterMigration = CliOptions.Flag("--exit-after-migration",
            "exit (0) once an outgoing migration completed, instead of staying paused in postmigrate until quit (QEMU's behaviour); for scripts");
        var restore = CliOptions.Text("--restore", "FILE", "do not boot: load a snapshot (same --memory and --cpus), run the guest");
        var socketMode = CliOptions.Text("--socket-mode", "OCTAL", "file mode of the --qmp and --console sockets (default 0600: the owner only; e.g. 0660 lets the group in)");
        var lazy = LazyRestoreReport.Option();
        var command = new Command("run", "boot a guest; exits 0 when it powers off (or on QMP quit), 3 when it panics, 4 on a vCPU fault");
        machine.AddTo(command);
        var tlsCreds = CliOptions.Text("--tls-creds", "DIR", "migrate over TLS 1.3 with both ends authenticated: x509 credentials in QEMU's layout (ca-cert.pem, server-cert.pem, server-key.pem, client-cert.pem, client-key.pem); sets the tls-creds parameter of migrations into and out of this VM");
        var tlsAuthz = CliOptions.Text("--tls-authz", "SUBJECTS", "with --tls-creds on a destination: the client certificate subjects allowed to connect, separated by ';' (default: any the CA signed)");
        foreach (var option in new Option[] { console, qmp, socketMode, incoming, exitAfterMigration, tlsCreds, tlsAuthz, restore, lazy })
            command.Options.Add(option);
        command.SetGuardedAction(parse =>
        {
            var incomingText = parse.GetValue(incoming);
            var uri = incomingText is null or "defer" ? null : ParseIncoming(incomingText);
            var restoreFile = parse.GetValue(restore);
            if (restoreFile is not null && incomingText is not null)
                throw new UsageException("--restore and --incoming cannot be combined");
            if (parse.GetValue(lazy) is not null && restoreFile is null)
                throw new UsageException("--lazy only applies to --restore FILE");
            var qmpSpec = parse.GetValue(qmp);
            if (qmpSpec is not null && (!qmpSpec.StartsWith("unix:", StringComparison.Ordinal) || qmpSpec.Length == 5))
                throw new UsageException($"--qmp '{qmpSpec}' is not unix:PATH");
            if (incomingText == "defer" && qmpSpec is null)
                throw new UsageException("--incoming defer needs --qmp unix:PATH (migrate-incoming starts the migration)");
            var mode = UnixListener.PrivateMode;
            if (parse.GetValue(socketMode) is { } modeText && !UnixListener.TryParseMode(modeText, out mode))
                throw new UsageException($"--socket-mode '{modeText}' is not an octal file mode such as 0600 or 0660");
            var tls = parse.GetValue(tlsCreds);
            var authz = parse.GetValue(tlsAuthz);
            if (authz is not null && tls is null)
                throw new UsageException("--tls-authz only applies with --tls-creds DIR");
            if (tls is not null)
            {
                // The credentials this VM's role needs are checked now, before a machine exists: a destination
                // serves, anything else may later connect as a source.
                try
                {
                    MigrationTls.Load(tls, incomingText is not null ? TlsEndpoint.Server : TlsEndpoint.Client).Dispose();
                }
                catch (MigrationTlsException e)
                {
                    throw new UsageException($"--tls-creds: {e.Message}");
                }
            }
            var config = machine.Parse(parse);
            config.Validate(MachineConfig.HostMemoryBytes());
            var start = new StartOptions(incomingText is not null, uri, restoreFile, parse.GetValue(lazy) ?? RestoreMode.Eager, parse.GetValue(exitAfterMigration), tls, authz);
            return Run(config, parse.GetValue(console) ?? "stdio", qmpSpec, mode, start);
        });
        return command;
    }

    /// <summary>How `run` starts the guest: booted, from an incoming migration (a URI, or null for defer), or from a snapshot.</summary>
    private sealed record StartOptions(bool Incoming, MigrationUri? IncomingUri, string? Restore, RestoreMode Mode, bool ExitAfterMigration, string? TlsCreds, string? TlsAuthz);

    private static MigrationUri ParseIncoming(string text)
    {
        MigrationUri uri;
        try
        {
            uri = MigrationUri.Parse(text);
        }
        catch (FormatException e)
        {
            throw new UsageException($"--incoming: {e.Message}");
        }
        // The capability cannot be set before a URI given here is used, so a file needs defer (or --restore).
        if (uri.Kind == MigrationUriKind.File)
            throw new UsageException($"--incoming {uri}: a file needs the mapped-ram capability; use --incoming defer, then migrate-set-capabilities mapped-ram and migrate-incoming (or --restore {uri.Path})");
        return uri;
    }

    private static ExitCode Run(MachineConfig config, string consoleSpec, string? qmpSpec, UnixFileMode socketMode, StartOptions start)
    {
        var log = Program.Loggers.CreateLogger("ferry");
        using var console = ConsoleBackend.Create(consoleSpec, socketMode);
        using var machine = GuestMachine.Create(config, console, Program.Loggers);
        var control = new GuestMachineControl(machine);
        var migration = new MigrationCommands(control, start.ExitAfterMigration);
        if (start.TlsCreds is not null)
            migration.Settings.Update(p => p with { TlsCreds = start.TlsCreds, TlsAuthz = start.TlsAuthz ?? "" });
        QmpServer? qmp = null;
        if (qmpSpec is not null)
        {
            qmp = new QmpServer(qmpSpec[5..]) { SocketMode = socketMode };
            MachineCommands.Register(qmp, control);
            BalloonCommands.Register(qmp, machine);
            migration.Register(qmp);
        }
        // A destination is inmigrate from its first QMP client on.
        if (start.Incoming)
            machine.Start(paused: true, pausedAs: MachineStatus.InMigrate);
        try
        {
            qmp?.Start();
        }
        catch (IOException e)
        {
            throw new UsageException($"--qmp {qmpSpec}: {e.Message}");
        }
        try
        {
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; machine.Stop(ShutdownCause.HostSignal, "interrupted (SIGINT)"); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; machine.Stop(ShutdownCause.HostSignal, "terminated (SIGTERM)"); });
            console.Start(machine.Serial);
            if (start.Restore is { } restore)
                Restore(machine, restore, start.Mode, log);
            else if (start.Incoming)
                IncomingMigration.Run(machine, migration, start.IncomingUri, log);
            else
                machine.Start();
            var exit = machine.Exited.GetAwaiter().GetResult();
            if (qmp is not null)
                MachineCommands.EmitShutdown(qmp, exit);
            var code = ExitCodes.For(exit);
            if (code == ExitCode.Ok)
                LogExit(log, exit.Message);
            else
                LogFault(log, exit.Message);
            return code;
        }
        finally
        {
            migration.Incoming.Dispose();
            qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
    }

    private static void Restore(GuestMachine machine, string restore, RestoreMode mode, ILogger log)
    {
        machine.Start(paused: true);
        try
        {
            var report = MachineSnapshots.Restore(machine, restore, mode: mode);
            var pages = report.Mode switch
            {
                RestoreMode.Lazy => $"{report.PagesMapped} pages owed by the file (paged in when first touched, the rest in the background)",
                RestoreMode.LazyMap => $"{report.PagesMapped} pages mapped from the file (read when first touched)",
                _ => $"{report.PagesLoaded} pages ({report.BytesRead / (1024.0 * 1024):F1} MiB read)",
            };
            LogRestored(log, restore, report.Lazy ? " lazily" : "", report.Milliseconds, pages, report.BalloonedPages, report.StateSections);
            report.Paging?.Completion.ContinueWith(t => LazyRestoreReport.Log(log, restore, report.Paging), TaskScheduler.Default);
        }
        catch (Exception e) when (e is Ferry.Migration.Snapshot.SnapshotFormatException or InvalidDataException or IOException or UnauthorizedAccessException)
        {
            throw new CliFailureException($"--restore {restore}: {(e is UnauthorizedAccessException ? "permission denied" : e.Message)}", ExitCode.LoadFailed);
        }
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "restored {File}{How} in {Milliseconds:F0} ms: {Pages}, {Ballooned} ballooned pages, {Sections} state sections; guest running")]
    private static partial void LogRestored(ILogger logger, string file, string how, double milliseconds, string pages, long ballooned, int sections);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Message}")]
    private static partial void LogExit(ILogger logger, string message);

    [LoggerMessage(Level = LogLevel.Error, Message = "{Message}")]
    private static partial void LogFault(ILogger logger, string message);
}
