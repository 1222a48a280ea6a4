using System.Runtime.InteropServices;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;

namespace Ferry.Cli;

public static class Program
{
    public const string Usage = """
        usage: ferry <command> [options]

        commands:
          run     boot a guest
                    --memory SIZE        guest RAM, a multiple of 2 MiB (default 512M; e.g. 512M, 8G)
                    --cpus N             vCPUs (default 1)
                    --console SPEC       stdio (default) or unix:PATH
                    --qmp unix:PATH      serve the QMP control socket there
                    --guest PATH         guest image (default: the one built from guest/)
                    --cmdline TEXT       guest command line (e.g. "free_mode=poison poison=0xaa")
                    --incoming tcp:HOST:PORT   do not boot: wait for a migration there, load it, run the guest
                                         (start with the source's --memory and --cpus)
                    --restore FILE       do not boot: load a snapshot (same --memory and --cpus), run the guest
                    --lazy               with --restore: map the file copy-on-write and run at once; pages are
                                         read when first touched (keep the file unchanged while the VM runs)
          demo    boot a guest, run a memory workload in it, print what happened and exit
                    --memory SIZE (default 1G)  --cpus N (default 2)  --guest PATH
          help    this text

        commands for a running VM (SOCK is its --qmp unix:PATH):
          status SOCK | stop SOCK | cont SOCK | quit SOCK
          balloon SOCK GUEST-SIZE   set the balloon so the guest has GUEST-SIZE (e.g. 1G), as QEMU's balloon
          balloon-info SOCK         balloon state: target, actual, ballooned pages, host memory, counters
          guest-stats SOCK          the guest's memory statistics from the balloon's stats queue
          hint SOCK start|stop|done|status   run free page hinting by hand
          free-bitmap SOCK [--drop-caches]   ask the guest for its free page bitmap (Ferry extension)
          qmp SOCK COMMAND ['{"arg": ...}']   any QMP command; prints the JSON reply
          snapshot save SOCK FILE [--paused] [--report FILE]   snapshot to a fixed-offset file; the VM runs
                                         on (--paused: stop it first, save in one pass, leave it stopped)
          snapshot inspect FILE [--json] [--verify]   blocks, pages per class, file vs allocated size, state,
                                         checksums (--verify: every page against its checksum; exit 1 if bad)
          migrate SOCK tcp:HOST:PORT [options]   live-migrate to a `ferry run --incoming` destination
                    --max-bandwidth SIZE   bytes per second over all channels (e.g. 500M; default unlimited)
                    --downtime-limit MS    largest acceptable pause (default 300)
                    --channels N           parallel TCP channels (default: one per core)
                    --auto-converge        throttle the vCPUs while the guest dirties faster than the link
                    --no-hint | --no-balloon-skip   turn off free page hinting / skipping ballooned pages
                    --report FILE          write the final statistics with per-pass figures as JSON
                    --quiet                no progress bar
        """;

    public static int Main(string[] args)
    {
        try
        {
            if (args.Length == 0 || args[0] is "help" or "--help" or "-h")
            {
                Console.WriteLine(Usage);
                return args.Length == 0 ? 2 : 0;
            }
            return args[0] switch
            {
                "run" => Run(args[1..]),
                "demo" => Demo.Run(args[1..]),
                "migrate" => MigrateCommand.Run(args[1..]),
                "snapshot" => SnapshotCommand.Run(args[1..]),
                var name when ControlCommands.Names.Contains(name) => ControlCommands.Run(name, args[1..]),
                _ => throw new UsageException($"unknown command '{args[0]}' (commands: run, demo, migrate, snapshot, {string.Join(", ", ControlCommands.Names)}, help)"),
            };
        }
        catch (UsageException e)
        {
            Console.Error.WriteLine($"ferry: {e.Message}");
            return 2;
        }
        catch (Exception e) when (e is ConfigException or KvmUnavailableException or InvalidGuestImageException)
        {
            Console.Error.WriteLine($"ferry: {e.Message}");
            return 1;
        }
    }

    internal static MachineConfig ParseMachineConfig(CliArguments a, string command, string defaultMemory, int defaultCpus)
    {
        var memoryText = a.Get("memory") ?? defaultMemory;
        var cpusText = a.Get("cpus");
        var cpus = defaultCpus;
        if (cpusText is not null && (!int.TryParse(cpusText, out cpus) || cpus < 1))
            throw new UsageException($"ferry {command}: --cpus '{cpusText}' is not a positive whole number");
        return new MachineConfig
        {
            MemoryBytes = MachineConfig.ParseSize(memoryText, "--memory"),
            Cpus = cpus,
            GuestImagePath = a.Get("guest") ?? GuestImageLocator.Locate(),
            CommandLine = a.Get("cmdline") ?? "",
        };
    }

    private static int Run(string[] args)
    {
        var a = CliArguments.Parse(args, "run", ["memory", "cpus", "console", "qmp", "guest", "cmdline", "incoming", "restore"], ["lazy"]);
        if (a.Positional.Count > 0)
            throw new UsageException($"ferry run: unexpected argument '{a.Positional[0]}'");
        var config = ParseMachineConfig(a, "run", "512M", 1);
        var qmpSpec = a.Get("qmp");
        Ferry.Migration.Transport.MigrationUri? incoming = null;
        if (a.Get("incoming") is { } incomingText)
        {
            try
            {
                incoming = Ferry.Migration.Transport.MigrationUri.Parse(incomingText);
            }
            catch (FormatException e)
            {
                throw new UsageException($"ferry run: --incoming: {e.Message}");
            }
        }
        if (a.Get("restore") is not null && incoming is not null)
            throw new UsageException("ferry run: --restore and --incoming cannot be combined");
        if (a.Has("lazy") && a.Get("restore") is null)
            throw new UsageException("ferry run: --lazy only applies to --restore FILE");
        if (qmpSpec is not null && (!qmpSpec.StartsWith("unix:", StringComparison.Ordinal) || qmpSpec.Length == 5))
            throw new UsageException($"ferry run: --qmp '{qmpSpec}' is not unix:PATH");
        using var console = ConsoleBackend.Create(a.Get("console") ?? "stdio");
        using var machine = GuestMachine.Create(config, console);
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
                throw new UsageException($"ferry run: --qmp {qmpSpec}: {e.Message}");
            }
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; machine.Stop("interrupted (SIGINT)"); });
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; machine.Stop("terminated (SIGTERM)"); });
        console.Start(machine.Serial);
        var restore = a.Get("restore");
        if (restore is not null)
        {
            machine.Start(paused: true);
            try
            {
                var report = Ferry.Migration.Machines.MachineSnapshots.Restore(machine, restore, lazy: a.Has("lazy"));
                var pages = report.Lazy
                    ? $"{report.PagesMapped} pages mapped from the file (read when first touched)"
                    : $"{report.PagesLoaded} pages ({report.BytesRead / (1024.0 * 1024):F1} MiB read)";
                Console.Error.WriteLine($"ferry: restored {restore}{(report.Lazy ? " lazily" : "")} in {report.Milliseconds:F0} ms: {pages}, {report.BalloonedPages} ballooned pages, {report.StateSections} state sections; guest running");
            }
            catch (Exception e) when (e is Ferry.Migration.Snapshot.SnapshotFormatException or InvalidDataException or IOException or UnauthorizedAccessException)
            {
                Console.Error.WriteLine($"ferry: --restore {restore}: {e.Message}");
                qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                return IncomingMigration.FailedExitCode;
            }
        }
        else if (incoming is null)
        {
            machine.Start();
        }
        else
        {
            var loaded = IncomingMigration.Run(machine, incoming);
            if (loaded != 0)
            {
                qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
                return loaded;
            }
        }
        var exit = machine.Exited.GetAwaiter().GetResult();
        qmp?.Emit("SHUTDOWN", new System.Text.Json.Nodes.JsonObject { ["guest"] = exit.Kind == MachineExitKind.PowerOff, ["reason"] = exit.Message });
        qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Console.Error.WriteLine($"ferry: {exit.Message}");
        return exit.ExitCode;
    }

}
