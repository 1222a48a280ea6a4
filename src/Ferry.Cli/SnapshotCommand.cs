using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Migration.Snapshot;

namespace Ferry.Cli;

/// <summary>
/// `ferry snapshot save unix:SOCK FILE [--paused]` (through QMP ferry-snapshot-save, with the migration progress bar
/// and table) and `ferry snapshot inspect FILE [--json]` (reads and checks the file itself).
/// </summary>
internal static class SnapshotCommand
{
    public const string Usage = "usage: ferry snapshot save unix:SOCK FILE [--paused] [--report FILE] [--quiet] | ferry snapshot inspect FILE [--json] [--verify]";

    public static int Run(string[] args)
    {
        if (args.Length == 0)
            throw new UsageException($"ferry snapshot: {Usage}");
        return args[0] switch
        {
            "save" => Save(args[1..]),
            "inspect" => Inspect(args[1..]),
            _ => throw new UsageException($"ferry snapshot: '{args[0]}' is not save or inspect ({Usage})"),
        };
    }

    private static int Save(string[] args)
    {
        var a = CliArguments.Parse(args, "snapshot save", ["report"], ["paused", "quiet"]);
        if (a.Positional.Count != 2 || !a.Positional[0].StartsWith("unix:", StringComparison.Ordinal) || a.Positional[0].Length == 5)
            throw new UsageException($"ferry snapshot save: {Usage}");
        var path = Path.GetFullPath(a.Positional[1]);
        QmpClient qmp;
        try
        {
            qmp = QmpClient.Connect(a.Positional[0][5..]);
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"ferry: {e.Message}");
            return 1;
        }
        using (qmp)
        {
            JsonObject? final;
            try
            {
                qmp.Events.Clear();
                qmp.Execute("ferry-snapshot-save", new JsonObject { ["file"] = path, ["paused"] = a.Has("paused") });
                final = MigrateCommand.Follow(qmp, a.Has("quiet") || Console.IsErrorRedirected);
            }
            catch (QmpException e)
            {
                Console.Error.WriteLine($"ferry: snapshot save: {e.Class}: {e.Message}");
                return 1;
            }
            if (final is null)
            {
                Console.Error.WriteLine("ferry: snapshot save: the VM closed its QMP socket before the snapshot finished");
                return 1;
            }
            MigrateCommand.PrintTable(final);
            if (a.Get("report") is { } report)
                File.WriteAllText(report, final.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
            if (final["status"]?.GetValue<string>() != "completed")
            {
                Console.Error.WriteLine($"ferry: snapshot save failed: {final["error-desc"]}");
                return 1;
            }
            Console.WriteLine($"snapshot written: {path}");
            return 0;
        }
    }

    private static int Inspect(string[] args)
    {
        var a = CliArguments.Parse(args, "snapshot inspect", [], ["json", "verify"]);
        if (a.Positional.Count != 1)
            throw new UsageException($"ferry snapshot inspect: {Usage}");
        SnapshotInspection inspection;
        try
        {
            using var file = SnapshotFile.Open(a.Positional[0]);
            inspection = file.Inspect(verifyPages: a.Has("verify"), threads: Ferry.Migration.Machines.MachineSnapshots.DefaultThreads);
        }
        catch (Exception e) when (e is SnapshotFormatException or IOException or UnauthorizedAccessException)
        {
            Console.Error.WriteLine($"ferry: snapshot inspect: {e.Message}");
            return 1;
        }
        if (!a.Has("json"))
        {
            Console.Write(inspection.Format());
            return inspection.ExitCode;
        }
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
        Console.WriteLine(new JsonObject
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
        }.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));
        return inspection.ExitCode;
    }
}
