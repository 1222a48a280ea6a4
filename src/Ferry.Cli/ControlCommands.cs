using System.Globalization;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;

namespace Ferry.Cli;

/// <summary>
/// `ferry` subcommands that talk to a running VM over its QMP socket and print readable results:
/// status, stop, cont, quit, balloon, balloon-info, guest-stats, hint, and the raw `qmp`.
/// </summary>
internal static class ControlCommands
{
    public static readonly string[] Names = ["status", "stop", "cont", "quit", "balloon", "balloon-info", "guest-stats", "hint", "free-bitmap", "qmp"];

    public static int Run(string name, string[] args)
    {
        if (args.Length == 0 || !args[0].StartsWith("unix:", StringComparison.Ordinal) || args[0].Length == 5)
            throw new UsageException($"ferry {name}: the first argument must be the QMP socket, unix:PATH");
        QmpClient client;
        try
        {
            client = QmpClient.Connect(args[0][5..]);
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"ferry: {e.Message}");
            return 1;
        }
        using (client)
        {
            try
            {
                return Dispatch(client, name, args[1..]);
            }
            catch (QmpException e)
            {
                Console.Error.WriteLine($"ferry: {name}: {e.Class}: {e.Message}");
                return 1;
            }
        }
    }

    private static int Dispatch(QmpClient qmp, string name, string[] rest)
    {
        switch (name)
        {
            case "status":
                var s = qmp.Execute("query-status")!;
                Console.WriteLine($"VM status: {s["status"]}");
                return 0;
            case "stop" or "cont" or "quit":
                qmp.Execute(name);
                Console.WriteLine(name switch { "stop" => "VM paused", "cont" => "VM running", _ => "VM quitting" });
                return 0;
            case "balloon":
                if (rest.Length != 1)
                    throw new UsageException("ferry balloon: usage: ferry balloon unix:PATH GUEST-SIZE (e.g. 1G)");
                var size = MachineConfig.ParseSize(rest[0], "guest size");
                qmp.Execute("balloon", new JsonObject { ["value"] = size });
                Console.WriteLine($"balloon target set: guest size {MachineConfig.FormatSize(size)}");
                return 0;
            case "balloon-info":
                var info = (JsonObject)qmp.Execute("ferry-balloon-info")!;
                var actual = qmp.Execute("query-balloon")!["actual"]!.GetValue<ulong>();
                Console.WriteLine($"guest size now:      {Mib(actual)}");
                foreach (var (key, value) in info)
                    Console.WriteLine($"{key + ":",-26} {value}");
                return 0;
            case "guest-stats":
                var stats = (JsonObject)qmp.Execute("ferry-balloon-stats")!["stats"]!;
                foreach (var (key, value) in stats)
                {
                    var number = value!.GetValue<ulong>();
                    Console.WriteLine($"{key + ":",-20} {(key.EndsWith("memory", StringComparison.Ordinal) || key == "disk-caches" ? Mib(number) : number.ToString(CultureInfo.InvariantCulture))}");
                }
                return 0;
            case "hint":
                var action = rest.Length == 1 ? rest[0] : throw new UsageException("ferry hint: usage: ferry hint unix:PATH start|stop|done|status");
                if (action is not ("start" or "stop" or "done" or "status"))
                    throw new UsageException($"ferry hint: '{action}' is not start, stop, done or status");
                var result = qmp.Execute($"ferry-free-page-hint-{action}");
                if (action == "start")
                    Console.WriteLine($"free page hint run started, cmd_id 0x{result!["cmd-id"]!.GetValue<uint>():X}");
                else if (action == "status")
                    Console.WriteLine($"hinting: {result!["state"]}, cmd_id 0x{result["cmd-id"]!.GetValue<uint>():X}, {result["hinted-pages"]} pages hinted ({Mib(result["hinted-pages"]!.GetValue<ulong>() * Page.Size)}), {result["dropped-stale-hints"]} stale hints dropped");
                else
                    Console.WriteLine($"free page hint run: {action}");
                return 0;
            case "free-bitmap":
                var bitmap = qmp.Execute("ferry-free-page-bitmap", new JsonObject { ["drop-caches"] = rest.Contains("--drop-caches") })!;
                Console.WriteLine($"guest free pages (request {bitmap["request-id"]}): {bitmap["free-pages"]} ({Mib(bitmap["free-pages"]!.GetValue<ulong>() * Page.Size)})");
                return 0;
            default: // qmp
                if (rest.Length is < 1 or > 2)
                    throw new UsageException("ferry qmp: usage: ferry qmp unix:PATH COMMAND ['{\"arg\": ...}']");
                JsonObject? arguments = null;
                if (rest.Length == 2)
                {
                    try
                    {
                        arguments = JsonNode.Parse(rest[1]) as JsonObject ?? throw new UsageException($"ferry qmp: arguments '{rest[1]}' are not a JSON object");
                    }
                    catch (System.Text.Json.JsonException)
                    {
                        throw new UsageException($"ferry qmp: arguments '{rest[1]}' are not valid JSON");
                    }
                }
                Console.WriteLine(new JsonObject { ["return"] = qmp.Execute(rest[0], arguments)?.DeepClone() }.ToJsonString());
                return 0;
        }
    }

    private static string Mib(ulong bytes) => $"{bytes / (1024.0 * 1024):0.0} MiB";
}
