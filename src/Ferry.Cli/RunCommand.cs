using System.CommandLine;
using System.Runtime.InteropServices;
using Ferry.Control;
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
        var incoming = CliOptions.Text("--incoming", "tcp:HOST:PORT", "do not boot: wait for a migration there, load it, run the guest (same --memory and --cpus as the source)");
        var restore = CliOptions.Text("--restore", "FILE", "do not boot: load a snapshot (same --memory and --cpus), run the guest");
        var lazy = LazyRestoreReport.Option();
        var command = new Command("run", "boot a guest; exits 0 when it powers off (or on QMP quit), 3 when it panics, 4 on a vCPU fault");
        machine.AddTo(command);
        foreach (var option in new Option[] { console, qmp, incoming, restore, lazy })
            command.Options.Add(option);
        command.SetGuardedAction(parse =>
        {
            MigrationUri? uri = null;
            if (parse.GetValue(incoming) is { } incomingText)
            {
                try
                {
                    uri = MigrationUri.Parse(incomingText);
                }
                catch (FormatException e)
                {
                    throw new UsageException($"--incoming: {e.Message}");
                }
            }
            var restoreFile = parse.GetValue(restore);
            if (restoreFile is not null && uri is not null)
                throw new UsageException("--restore and --incoming cannot be combined");
            if (parse.GetValue(lazy) is not null && restoreFile is null)
                throw new UsageException("--lazy only applies to --restore FILE");
            var qmpSpec = parse.GetValue(qmp);
            if (qmpSpec is not null && (!qmpSpec.StartsWith("unix:", StringComparison.Ordinal) || qmpSpec.Length == 5))
                throw new UsageException($"--qmp '{qmpSpec}' is not unix:PATH");
            var config = machine.Parse(parse);
            config.Validate(MachineConfig.HostMemoryBytes());
            return Run(config, parse.GetValue(console) ?? "stdio", qmpSpec, uri, restoreFile, parse.GetValue(lazy) ?? RestoreMode.Eager);
        });
        return command;
    }

    private static ExitCode Run(MachineConfig config, string consoleSpec, string? qmpSpec, MigrationUri? incoming, string? restore, RestoreMode mode)
    {
        var log = Program.Loggers.CreateLogger("ferry");
        using var console = ConsoleBackend.Create(consoleSpec);
        using var machine = GuestMachine.Create(config, console, Program.Loggers);
        QmpServer? qmp = null;
        if (qmpSpec is not null)
        {
            qmp = new QmpServer(qmpSpec[5..]);
            MachineCommands.Register(qmp, machine);
            BalloonCommands.Register(qmp, machine);
            MigrationCommands.Register(qmp, machine);
            try
            {
                qmp.Start();
            }
            catch (IOException e)
            {
                throw new UsageException($"--qmp {qmpSpec}: {e.Message}");
            }
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; machine.Stop("interrupted (SIGINT)"); });
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; machine.Stop("terminated (SIGTERM)"); });
        console.Start(machine.Serial);
        if (restore is not null)
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
                qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                throw new CliFailureException($"--restore {restore}: {(e is UnauthorizedAccessException ? "permission denied" : e.Message)}", ExitCode.LoadFailed);
            }
        }
        else if (incoming is null)
        {
            machine.Start();
        }
        else
        {
            var loaded = IncomingMigration.Run(machine, incoming, log);
            if (loaded != ExitCode.Ok)
            {
                qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                return loaded;
            }
        }
        var exit = machine.Exited.GetAwaiter().GetResult();
        qmp?.Emit("SHUTDOWN", new System.Text.Json.Nodes.JsonObject { ["guest"] = exit.Kind == MachineExitKind.PowerOff, ["reason"] = exit.Message });
        qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        var code = ExitCodes.For(exit.Kind);
        if (code == ExitCode.Ok)
            LogExit(log, exit.Message);
        else
            LogFault(log, exit.Message);
        return code;
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "restored {File}{How} in {Milliseconds:F0} ms: {Pages}, {Ballooned} ballooned pages, {Sections} state sections; guest running")]
    private static partial void LogRestored(ILogger logger, string file, string how, double milliseconds, string pages, long ballooned, int sections);

    [LoggerMessage(Level = LogLevel.Information, Message = "{Message}")]
    private static partial void LogExit(ILogger logger, string message);

    [LoggerMessage(Level = LogLevel.Error, Message = "{Message}")]
    private static partial void LogFault(ILogger logger, string message);
}
