using System.CommandLine;
using System.Globalization;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;

namespace Ferry.Cli;

/// <summary>
/// `ferry` subcommands that talk to a running VM over its QMP socket and print readable results:
/// status, stop, cont, quit, balloon, balloon-info, guest-stats, hint, free-bitmap, and the raw `qmp`.
/// </summary>
internal static class ControlCommands
{
    public static IEnumerable<Command> Build()
    {
        yield return Simple("status", "print the VM's run state", qmp => $"VM status: {qmp.Execute("query-status")!["status"]}");
        yield return Simple("stop", "pause all vCPUs", qmp => Do(qmp, "stop", "VM paused"));
        yield return Simple("cont", "resume the vCPUs", qmp => Do(qmp, "cont", "VM running"));
        yield return Simple("quit", "end the VM", qmp => Do(qmp, "quit", "VM quitting"));

        var size = CliOptions.SizeArgument("GUEST-SIZE", "GUEST-SIZE", "the memory the guest keeps (1G, 1.5G; a bare number is MiB, as HMP balloon)");
        yield return WithSocket("balloon", "set the balloon so the guest has GUEST-SIZE, as QEMU's balloon", [size], (qmp, parse) =>
        {
            var bytes = parse.GetValue(size)!.Value;
            qmp.Execute("balloon", new JsonObject { ["value"] = bytes });
            Console.WriteLine($"balloon target set: guest size {MachineConfig.FormatSize(bytes)}");
        });

        yield return Simple("balloon-info", "balloon state: target, actual, ballooned pages, host memory, counters", qmp =>
        {
            var info = (JsonObject)qmp.Execute("ferry-balloon-info")!;
            var actual = qmp.Execute("query-balloon")!["actual"]!.GetValue<ulong>();
            return string.Join('\n', info.Select(p => $"{p.Key + ":",-26} {p.Value}").Prepend($"guest size now:      {Mib(actual)}"));
        });

        yield return Simple("guest-stats", "the guest's memory statistics from the balloon's stats queue", qmp =>
        {
            var stats = (JsonObject)qmp.Execute("ferry-balloon-stats")!["stats"]!;
            return string.Join('\n', stats.Select(p =>
            {
                var number = p.Value!.GetValue<ulong>();
                var text = p.Key.EndsWith("memory", StringComparison.Ordinal) || p.Key == "disk-caches" ? Mib(number) : number.ToString(CultureInfo.InvariantCulture);
                return $"{p.Key + ":",-20} {text}";
            }));
        });

        var action = CliOptions.Choice("ACTION", "start, stop, done or status", "start", "stop", "done", "status");
        yield return WithSocket("hint", "run free page hinting by hand", [action], (qmp, parse) =>
        {
            var what = parse.GetValue(action)!;
            var result = qmp.Execute($"ferry-free-page-hint-{what}");
            Console.WriteLine(what switch
            {
                "start" => $"free page hint run started, cmd_id 0x{result!["cmd-id"]!.GetValue<uint>():X}",
                "status" => $"hinting: {result!["state"]}, cmd_id 0x{result["cmd-id"]!.GetValue<uint>():X}, {result["hinted-pages"]} pages hinted ({Mib(result["hinted-pages"]!.GetValue<ulong>() * Page.Size)}), {result["dropped-stale-hints"]} stale hints dropped",
                _ => $"free page hint run: {what}",
            });
        });

        var dropCaches = CliOptions.Flag("--drop-caches", "ask the guest to drop its caches first");
        var freeBitmap = WithSocket("free-bitmap", "ask the guest for its free page bitmap (Ferry extension)", [], (qmp, parse) =>
        {
            var bitmap = qmp.Execute("ferry-free-page-bitmap", new JsonObject { ["drop-caches"] = parse.GetValue(dropCaches) })!;
            Console.WriteLine($"guest free pages (request {bitmap["request-id"]}): {bitmap["free-pages"]} ({Mib(bitmap["free-pages"]!.GetValue<ulong>() * Page.Size)})");
        });
        freeBitmap.Options.Add(dropCaches);
        yield return freeBitmap;

        var name = CliOptions.Word("COMMAND", "the QMP command");
        var arguments = new Argument<string?>("ARGUMENTS") { Arity = ArgumentArity.ZeroOrOne, HelpName = "'{\"arg\": ...}'", Description = "its arguments, a JSON object" };
        yield return WithSocket("qmp", "any QMP command; prints the JSON reply", [name, arguments], (qmp, parse) =>
        {
            JsonObject? args = null;
            if (parse.GetValue(arguments) is { } text)
            {
                try
                {
                    args = JsonNode.Parse(text) as JsonObject ?? throw new UsageException($"arguments '{text}' are not a JSON object");
                }
                catch (System.Text.Json.JsonException)
                {
                    throw new UsageException($"arguments '{text}' are not valid JSON");
                }
            }
            Console.WriteLine(new JsonObject { ["return"] = qmp.Execute(parse.GetValue(name)!, args)?.DeepClone() }.ToJsonString());
        });
    }

    private static string Do(QmpClient qmp, string command, string done)
    {
        qmp.Execute(command);
        return done;
    }

    /// <summary>A command that takes only the socket and prints one result.</summary>
    private static Command Simple(string name, string description, Func<QmpClient, string> run) =>
        WithSocket(name, description, [], (qmp, _) => Console.WriteLine(run(qmp)));

    /// <summary>A command on a running VM: `ferry NAME unix:SOCK ARGUMENTS...`; connects, runs, disconnects.</summary>
    private static Command WithSocket(string name, string description, Argument[] arguments, Action<QmpClient, ParseResult> run)
    {
        var socket = CliOptions.Socket();
        var command = new Command(name, description);
        command.Arguments.Add(socket);
        foreach (var argument in arguments)
            command.Arguments.Add(argument);
        command.SetGuardedAction(parse =>
        {
            using var qmp = QmpClient.Connect(parse.GetValue(socket)!);
            run(qmp, parse);
            return ExitCode.Ok;
        });
        return command;
    }

    private static string Mib(ulong bytes) => $"{bytes / (1024.0 * 1024):0.0} MiB";
}
