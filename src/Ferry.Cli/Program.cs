using System.Diagnostics;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;
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
          demo    boot a guest, run a memory workload in it, print what happened and exit
                    --memory SIZE (default 1G)  --cpus N (default 2)  --guest PATH
          qmp     send one QMP command: ferry qmp unix:PATH COMMAND ['{"arg": ...}']
          help    this text
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
                "qmp" => QmpClient(args[1..]),
                _ => throw new UsageException($"unknown command '{args[0]}' (commands: run, demo, qmp, help)"),
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
        var a = CliArguments.Parse(args, "run", ["memory", "cpus", "console", "qmp", "guest", "cmdline"], []);
        if (a.Positional.Count > 0)
            throw new UsageException($"ferry run: unexpected argument '{a.Positional[0]}'");
        var config = ParseMachineConfig(a, "run", "512M", 1);
        var qmpSpec = a.Get("qmp");
        if (qmpSpec is not null && (!qmpSpec.StartsWith("unix:", StringComparison.Ordinal) || qmpSpec.Length == 5))
            throw new UsageException($"ferry run: --qmp '{qmpSpec}' is not unix:PATH");
        using var console = ConsoleBackend.Create(a.Get("console") ?? "stdio");
        using var machine = Machine.Machine.Create(config, console);
        QmpServer? qmp = null;
        if (qmpSpec is not null)
        {
            qmp = new QmpServer(qmpSpec[5..]);
            MachineCommands.Register(qmp, machine);
            BalloonCommands.Register(qmp, machine);
            qmp.Start();
        }
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; machine.Stop("interrupted (SIGINT)"); });
        using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; machine.Stop("terminated (SIGTERM)"); });
        console.Start(machine.Serial);
        machine.Start();
        var exit = machine.Exited.GetAwaiter().GetResult();
        qmp?.Emit("SHUTDOWN", new System.Text.Json.Nodes.JsonObject { ["guest"] = exit.Kind == MachineExitKind.PowerOff, ["reason"] = exit.Message });
        qmp?.DisposeAsync().AsTask().GetAwaiter().GetResult();
        Console.Error.WriteLine($"ferry: {exit.Message}");
        return exit.ExitCode;
    }

    private static int QmpClient(string[] args)
    {
        if (args.Length < 2 || !args[0].StartsWith("unix:", StringComparison.Ordinal))
            throw new UsageException("ferry qmp: usage: ferry qmp unix:PATH COMMAND ['{\"arg\": ...}']");
        var path = args[0][5..];
        var arguments = args.Length > 2 ? args[2] : null;
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e)
        {
            Console.Error.WriteLine($"ferry: cannot connect to QMP socket {path}: {e.Message}");
            return 1;
        }
        using var stream = new NetworkStream(socket);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
        reader.ReadLine(); // greeting
        writer.WriteLine("{\"execute\":\"qmp_capabilities\"}");
        reader.ReadLine();
        writer.WriteLine(arguments is null
            ? $"{{\"execute\":\"{args[1]}\"}}"
            : $"{{\"execute\":\"{args[1]}\",\"arguments\":{arguments}}}");
        string? line;
        while ((line = reader.ReadLine()) is not null)
        {
            if (line.Contains("\"event\"", StringComparison.Ordinal))
                continue;
            Console.WriteLine(line);
            return line.Contains("\"error\"", StringComparison.Ordinal) ? 1 : 0;
        }
        return 1;
    }

    internal static double Seconds(Stopwatch sw) => sw.Elapsed.TotalSeconds;
}
