using System.CommandLine;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Migration.Snapshot;

namespace Ferry.Cli;

/// <summary>
/// `ferry snapshot save unix:SOCK FILE [--paused]` (through QMP ferry-snapshot-save, with the migration progress
/// display and tables) and `ferry snapshot inspect FILE [--json]` (reads and checks the file itself).
/// </summary>
internal static class SnapshotCommand
{
    public static Command Build()
    {
        var command = new Command("snapshot", "save a running VM to a snapshot file, or inspect one");
        command.Subcommands.Add(BuildSave());
        command.Subcommands.Add(BuildInspect());
        return command;
    }

    private static Command BuildSave()
    {
        var socket = CliOptions.Socket();
        var file = new Argument<string>("FILE") { Description = "the snapshot file to write (checked before anything starts)" };
        var paused = CliOptions.Flag("--paused", "stop the VM first, save in one pass, leave it stopped");
        var report = CliOptions.Text("--report", "FILE", "write the final statistics as JSON");
        var quiet = CliOptions.Flag("--quiet", "no progress display");
        var command = new Command("save", "snapshot a running VM to a fixed-offset, sparse file; the VM runs on (Ctrl-C cancels)");
        command.Arguments.Add(socket);
        command.Arguments.Add(file);
        command.Options.Add(paused);
        command.Options.Add(report);
        command.Options.Add(quiet);
        command.SetGuardedAction(parse =>
        {
            var path = OutputPath.Check(parse.GetValue(file)!, "snapshot file");
            var reportPath = parse.GetValue(report) is { } r ? OutputPath.Check(r, "--report") : null;
            using var qmp = QmpClient.Connect(parse.GetValue(socket)!);
            // The progress display follows the events, which are sent only with the events capability on.
            qmp.Execute("migrate-set-capabilities", new JsonObject
            {
                ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = Ferry.Migration.Engine.MigrationCapabilityTable.Events.Name, ["state"] = true }),
            });
            qmp.Events.Clear();
            qmp.Execute("ferry-snapshot-save", new JsonObject { ["file"] = path, ["paused"] = parse.GetValue(paused) });
            var code = MigrateCommand.FollowJob(qmp, MigrationProgress.ModeFor(parse.GetValue(quiet)), reportPath, "snapshot save");
            if (code == ExitCode.Ok)
                Console.WriteLine($"snapshot written: {path}");
            return code;
        });
        return command;
    }

    private static Command BuildInspect()
    {
        var file = new Argument<string>("FILE") { Description = "the snapshot file" };
        var json = CliOptions.Flag("--json", "print JSON instead of text");
        var verify = CliOptions.Flag("--verify", "check every page against its checksum (exit 1 when one is bad)");
        var command = new Command("inspect", "show what a snapshot file holds: blocks, pages per class, file vs allocated size, state, checksums");
        command.Arguments.Add(file);
        command.Options.Add(json);
        command.Options.Add(verify);
        command.SetGuardedAction(parse =>
        {
            SnapshotInspection inspection;
            try
            {
                using var snapshot = SnapshotFile.Open(parse.GetValue(file)!);
                inspection = snapshot.Inspect(verifyPages: parse.GetValue(verify), threads: Ferry.Migration.Machines.MachineSnapshots.DefaultThreads);
            }
            catch (Exception e) when (e is SnapshotFormatException or IOException or UnauthorizedAccessException)
            {
                throw new CliFailureException(e is UnauthorizedAccessException ? $"{parse.GetValue(file)}: permission denied" : e.Message);
            }
            Console.Write(parse.GetValue(json) ? Json(inspection) + "\n" : inspection.Format());
            return inspection.ExitCode == 0 ? ExitCode.Ok : ExitCode.Failure;
        });
        return command;
    }

    private static string Json(SnapshotInspection inspection)
    {
        var blocks = new JsonArray();
        foreach (var b in inspection.Blocks)
        {
            blocks.Add((JsonNode)new JsonObject
            {
                ["name"] = b.Name, ["size"] = b.Size, ["pages"] = b.Pages, ["present-pages"] = b.PresentPages,
                ["ballooned-pages"] = b.BalloonedPages, ["absent-pages"] = b.AbsentPages, ["pages-offset"] = b.PagesOffset,
            });
        }
        var state = new JsonArray();
        foreach (var s in inspection.State)
            state.Add((JsonNode)new JsonObject { ["kind"] = s.Kind.ToString().ToLowerInvariant(), ["index"] = s.Index, ["name"] = s.Name, ["length"] = s.Length, ["crc"] = s.Crc });
        return new JsonObject
        {
            ["path"] = inspection.Path,
            ["version"] = inspection.Version,
            ["page-size"] = inspection.PageSize,
            ["file-bytes"] = inspection.FileBytes,
            ["allocated-bytes"] = inspection.AllocatedBytes,
            ["present-bytes"] = inspection.PresentBytes,
            ["blocks"] = blocks,
            ["state"] = state,
            ["checksums"] = new JsonObject { ["verified"] = inspection.Checksums.Verified, ["failed"] = inspection.Checksums.Failed, ["status"] = inspection.Checksums.Status },
            ["page-checks"] = inspection.Pages?.ToJson(),
        }.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true });
    }
}
