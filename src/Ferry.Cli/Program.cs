using System.CommandLine;
using System.CommandLine.Help;
using System.CommandLine.Parsing;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Cli;

/// <summary>
/// `ferry`: the command tree (System.CommandLine: per-command --help, --version, suggestions), one-line errors and
/// the exit codes of <see cref="ExitCode"/>. Each command's own file holds its options and its action.
/// </summary>
public static partial class Program
{
    private static readonly Option<LogLevel> LogLevelOption = new("--log-level")
    {
        HelpName = "LEVEL",
        Description = $"the VMM's own messages on stderr from this level up: {string.Join(", ", CliLogging.Levels)}",
        Recursive = true,
        DefaultValueFactory = _ => LogLevel.Information,
        CustomParser = r =>
        {
            try
            {
                return CliLogging.ParseLevel(r.Tokens[0].Value);
            }
            catch (UsageException e)
            {
                r.AddError(e.Message);
                return LogLevel.Information;
            }
        },
    };

    /// <summary>Where the commands log (set once the command line is parsed).</summary>
    internal static ILoggerFactory Loggers { get; private set; } = NullLoggerFactory.Instance;

    public static int Main(string[] args)
    {
        var root = BuildCommand();
        if (args.Length == 0)
        {
            root.Parse(["--help"]).Invoke();
            return (int)ExitCode.Usage;
        }
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0 && parse.Action is not HelpAction)
            return Fail(CommandPath(parse.CommandResult), DescribeErrors(parse), ExitCode.Usage);
        using var loggers = CliLogging.Create(parse.GetValue(LogLevelOption));
        Loggers = loggers;
        try
        {
            return parse.Invoke(new InvocationConfiguration { EnableDefaultExceptionHandler = false, ProcessTerminationTimeout = null });
        }
        finally
        {
            Loggers = NullLoggerFactory.Instance;
        }
    }

    internal static RootCommand BuildCommand()
    {
        var root = new RootCommand("Ferry: a micro-VMM for fast live migration and snapshots. Exit codes: 0 ok, 1 failure, 2 usage error, 3 guest panic, 4 vCPU fault, 5 incoming/restore load failed, 6 cancelled.");
        root.Options.Add(LogLevelOption);
        root.Subcommands.Add(RunCommand.Build());
        root.Subcommands.Add(Demo.Build());
        root.Subcommands.Add(MigrateCommand.Build());
        root.Subcommands.Add(SnapshotCommand.Build());
        foreach (var command in ControlCommands.Build())
            root.Subcommands.Add(command);
        var help = new Command("help", "show this text, or a command's (ferry help migrate)");
        var topic = new Argument<string[]>("COMMAND") { Arity = ArgumentArity.ZeroOrMore, HelpName = "[COMMAND]", Description = "the command to explain" };
        help.Arguments.Add(topic);
        help.SetAction(r => root.Parse([.. r.GetValue(topic) ?? [], "--help"]).Invoke());
        root.Subcommands.Add(help);
        return root;
    }

    /// <summary>Runs a command's action: every error it raises becomes one line on stderr and its exit code.</summary>
    internal static void SetGuardedAction(this Command command, Func<ParseResult, ExitCode> action) => command.SetAction(parse =>
    {
        var path = CommandPath(parse.CommandResult);
        try
        {
            return (int)action(parse);
        }
        catch (UsageException e)
        {
            return Fail(path, e.Message, ExitCode.Usage);
        }
        catch (ConfigException e)
        {
            return Fail(path, e.Message, ExitCode.Usage);
        }
        catch (CliFailureException e)
        {
            return Fail(path, e.Message, e.Code);
        }
        catch (QmpException e)
        {
            return Fail(path, $"{e.Class}: {e.Message}", ExitCode.Failure);
        }
        catch (Exception e) when (e is KvmUnavailableException or InvalidGuestImageException or IOException)
        {
            return Fail(path, e.Message, ExitCode.Failure);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            LogInternalError(Loggers.CreateLogger("ferry"), e);
            return Fail(path, $"internal error ({e.GetType().Name}); run with --log-level debug for details", ExitCode.Failure);
        }
    });

    /// <summary>Prints a one-line error, "ferry: COMMAND: MESSAGE", and returns the exit code.</summary>
    internal static int Fail(string path, string message, ExitCode code)
    {
        Console.Error.WriteLine(path.Length == 0 ? $"ferry: {message}" : $"ferry: {path}: {message}");
        return (int)code;
    }

    /// <summary>"snapshot save" for `ferry snapshot save ...`, "" for the root.</summary>
    internal static string CommandPath(CommandResult result)
    {
        var names = new List<string>();
        for (SymbolResult? r = result; r is CommandResult c && c.Command is not RootCommand; r = r.Parent)
            names.Insert(0, c.Command.Name);
        return string.Join(' ', names);
    }

    /// <summary>The first parse error in one line, with a suggestion for a misspelt command or option.</summary>
    internal static string DescribeErrors(ParseResult parse)
    {
        var command = parse.CommandResult.Command;
        if (parse.UnmatchedTokens.Count > 0)
        {
            var token = parse.UnmatchedTokens[0];
            var help = command is RootCommand ? "ferry --help" : $"ferry {CommandPath(parse.CommandResult)} --help";
            if (token.StartsWith('-'))
                return $"unknown option '{token}'{Suggestion(token, OptionNames(command))} (see '{help}')";
            if (command.Subcommands.Count > 0)
                return $"unknown command '{token}'{Suggestion(token, command.Subcommands.Select(c => c.Name))} (see '{help}')";
            return $"unexpected argument '{token}' (usage: {UsageLine(command, CommandPath(parse.CommandResult))})";
        }
        var error = parse.Errors[0];
        // Our parsers' messages name the value; a missing or extra argument gets the usage line instead.
        if (error.SymbolResult is OptionResult or ArgumentResult { Tokens.Count: > 0 })
            return error.Message;
        if (command.Subcommands.Count > 0 && command.Arguments.Count == 0)
            return $"which one? usage: {string.Join(" | ", command.Subcommands.Select(c => UsageLine(c, $"{CommandPath(parse.CommandResult)} {c.Name}")))}";
        return $"usage: {UsageLine(command, CommandPath(parse.CommandResult))}";
    }

    /// <summary>"ferry migrate unix:SOCK tcp:HOST:PORT [--max-bandwidth SIZE] ... [--quiet]".</summary>
    internal static string UsageLine(Command command, string path)
    {
        var words = new List<string> { $"ferry {path}" };
        foreach (var argument in command.Arguments)
        {
            var name = argument.HelpName ?? argument.Name;
            words.Add(argument.Arity.MinimumNumberOfValues == 0 ? $"[{name}]" : name);
        }
        foreach (var option in command.Options)
        {
            if (option is HelpOption or VersionOption || option.Hidden)
                continue;
            words.Add(option.ValueType == typeof(bool) ? $"[{option.Name}]" : $"[{option.Name} {option.HelpName}]");
        }
        return string.Join(' ', words);
    }

    private static IEnumerable<string> OptionNames(Command command) =>
        command.Options.Concat(LogLevelOption is { } l ? [l] : []).SelectMany(o => o.Aliases.Prepend(o.Name));

    /// <summary>" (did you mean '--memory'?)" when one candidate is within two edits (or starts the same way).</summary>
    internal static string Suggestion(string token, IEnumerable<string> candidates)
    {
        var best = candidates
            .Select(c => (Name: c, Distance: EditDistance(token, c)))
            .Where(c => c.Distance <= Math.Max(2, c.Name.Length / 4) || (token.Length >= 4 && c.Name.StartsWith(token, StringComparison.Ordinal)))
            .OrderBy(c => c.Distance)
            .FirstOrDefault();
        return best.Name is null ? "" : $" (did you mean '{best.Name}'?)";
    }

    private static int EditDistance(string a, string b)
    {
        var previous = new int[b.Length + 1];
        var current = new int[b.Length + 1];
        for (var j = 0; j <= b.Length; j++)
            previous[j] = j;
        for (var i = 1; i <= a.Length; i++)
        {
            current[0] = i;
            for (var j = 1; j <= b.Length; j++)
                current[j] = Math.Min(Math.Min(current[j - 1] + 1, previous[j] + 1), previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1));
            (previous, current) = (current, previous);
        }
        return previous[b.Length];
    }

    [LoggerMessage(Level = LogLevel.Debug, Message = "internal error")]
    private static partial void LogInternalError(ILogger logger, Exception exception);
}
