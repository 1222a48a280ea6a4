using System.CommandLine;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Migration.Engine;

namespace Ferry.Cli;

/// <summary>
/// `ferry migrate unix:SOCK URI` (tcp:HOST:PORT, unix:PATH, exec:COMMAND, file:PATH with --mapped-ram): sets the
/// parameters and capabilities given (and the events capability, which it follows), starts the migration over
/// QMP, shows its progress while it runs and tables when it ends. Exit codes: <see cref="ExitCode.Ok"/> when
/// completed, <see cref="ExitCode.Cancelled"/> when cancelled (Ctrl-C), <see cref="ExitCode.Failure"/> when failed.
/// </summary>
internal static class MigrateCommand
{
    /// <summary>The migration parameters `ferry migrate` has an option for (MigrationParameterTable decides which).</summary>
    private static readonly MigrationParameter[] ParameterOptions = [.. MigrationParameterTable.All.Where(p => p.CliOption is not null)];

    /// <summary>The text parameters `ferry migrate` has an option for (tls-creds, tls-hostname).</summary>
    private static readonly MigrationTextParameter[] TextOptions = [.. MigrationParameterTable.Texts.Where(p => p.CliOption is not null)];

    /// <summary>The capabilities `ferry migrate` has a flag for.</summary>
    private static readonly MigrationCapability[] CapabilityFlags = [.. MigrationCapabilityTable.All.Where(c => c.CliFlag is not null)];

    public static Command Build()
    {
        var socket = CliOptions.Socket();
        var target = new Argument<string>("URI")
        {
            Description = "the destination: tcp:HOST:PORT, unix:PATH or exec:COMMAND (with --channels 1) of a `ferry run --incoming`, or file:PATH with --mapped-ram",
        };
        var command = new Command("migrate", "live-migrate a running VM to a `ferry run --incoming` destination or a file (Ctrl-C cancels; the VM runs on)");
        command.Arguments.Add(socket);
        command.Arguments.Add(target);
        var parameters = ParameterOptions.Select(p => (Parameter: p, Option: ParameterOption(p))).ToArray();
        foreach (var (_, option) in parameters)
            command.Options.Add(option);
        var texts = TextOptions.Select(p => (Parameter: p, Option: CliOptions.Text($"--{p.CliOption}", p == MigrationParameterTable.TlsCreds ? "DIR" : "NAME", p.Doc))).ToArray();
        foreach (var (_, option) in texts)
            command.Options.Add(option);
        var flags = CapabilityFlags.Select(c => (Capability: c, Option: CliOptions.Flag($"--{c.CliFlag}", c.Doc))).ToArray();
        foreach (var (_, option) in flags)
            command.Options.Add(option);
        var report = CliOptions.Text("--report", "FILE", "write the final statistics with per-pass figures as JSON (checked before the migration starts)");
        var quiet = CliOptions.Flag("--quiet", "no progress display");
        command.Options.Add(report);
        command.Options.Add(quiet);
        command.SetGuardedAction(parse =>
        {
            var uri = ParseTarget(parse.GetValue(target)!, parse.GetValue(flags.Single(f => f.Capability == MigrationCapabilityTable.MappedRam).Option));
            var reportPath = parse.GetValue(report) is { } r ? OutputPath.Check(r, "--report") : null;
            var values = new JsonObject();
            foreach (var (parameter, option) in parameters)
            {
                if (parse.GetValue(option) is { } value)
                    values[parameter.Name] = value;
            }
            foreach (var (parameter, option) in texts)
            {
                if (parse.GetValue(option) is { } text)
                    values[parameter.Name] = text;
            }
            using var qmp = QmpClient.Connect(parse.GetValue(socket)!);
            if (values.Count > 0)
                qmp.Execute("migrate-set-parameters", values);
            // Every capability with a flag is sent: the flag flips its default, its absence restores the default.
            var capabilities = new JsonArray();
            foreach (var (capability, option) in flags)
                capabilities.Add((JsonNode)new JsonObject { ["capability"] = capability.Name, ["state"] = parse.GetValue(option) != capability.Default });
            // The progress display follows MIGRATION_PASS and the final MIGRATION event, which QEMU sends only with events on.
            capabilities.Add((JsonNode)new JsonObject { ["capability"] = MigrationCapabilityTable.Events.Name, ["state"] = true });
            qmp.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = capabilities });
            qmp.Events.Clear();
            qmp.Execute("migrate", new JsonObject { ["uri"] = uri.ToString() });
            return FollowJob(qmp, MigrationProgress.ModeFor(parse.GetValue(quiet)), reportPath, "migration");
        });
        return command;
    }

    /// <summary>The target URI, refused before anything is connected when it is malformed or a file without --mapped-ram.</summary>
    private static Ferry.Migration.Transport.MigrationUri ParseTarget(string text, bool mappedRam)
    {
        Ferry.Migration.Transport.MigrationUri uri;
        try
        {
            uri = Ferry.Migration.Transport.MigrationUri.Parse(text);
        }
        catch (FormatException e)
        {
            throw new UsageException(e.Message);
        }
        if (uri.Kind == Ferry.Migration.Transport.MigrationUriKind.File && !mappedRam)
            throw new UsageException($"{uri}: a file needs --mapped-ram (the fixed-offset snapshot file, QEMU's mapped-ram)");
        return uri;
    }

    /// <summary>
    /// Follows a started job (a migration or a snapshot save) to its end: progress, tables, --report, and the exit
    /// code of its final status and error kind.
    /// </summary>
    internal static ExitCode FollowJob(QmpClient qmp, MigrationProgress.Mode mode, string? reportPath, string what)
    {
        var (final, cancelledByUser) = MigrationProgress.Follow(qmp, mode, what);
        if (final is null)
            throw new CliFailureException($"the VM closed its QMP socket before the {what} finished");
        MigrationReport.PrintTables(final);
        if (reportPath is not null)
            MigrationReport.Write(final, reportPath);
        var status = $"{final["status"]}";
        var code = ExitCodes.ForMigration(status, final["ferry-error-kind"]?.ToString());
        if (code == ExitCode.Cancelled && cancelledByUser)
            return code;
        if (final["ferry"]?["destination-may-be-running"]?.GetValue<bool>() == true)
            Console.Error.WriteLine("ferry: WARNING: the source VM is paused and the destination may be running the guest; resume the source ('cont') only once the destination is known not to run it");
        if (code != ExitCode.Ok)
            throw new CliFailureException($"{what} {status}: {final["error-desc"]}", code);
        return code;
    }

    /// <summary>A size for bytes per second (500M; a bare number is MiB/s), else a positive whole number; the range is the server's to check.</summary>
    private static Option<long?> ParameterOption(MigrationParameter parameter)
    {
        var name = $"--{parameter.CliOption}";
        if (parameter.Unit == ParameterUnit.BytesPerSecond)
        {
            return new Option<long?>(name)
            {
                HelpName = "SIZE",
                Description = $"{parameter.Doc} (bytes per second: 500M, 1.5G; a bare number is MiB)",
                CustomParser = r => (long?)CliOptions.ParseSize(r, name),
            };
        }
        return parameter.Unit == ParameterUnit.Milliseconds
            ? CliOptions.Positive(name, "MS", parameter.Doc, "number of milliseconds")
            : CliOptions.Positive(name, parameter.Unit == ParameterUnit.Percent ? "PERCENT" : "N", parameter.Doc);
    }
}
