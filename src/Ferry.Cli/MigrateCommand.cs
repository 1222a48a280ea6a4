using System.Globalization;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;

namespace Ferry.Cli;

/// <summary>
/// `ferry migrate unix:SOCK tcp:HOST:PORT`: sets the parameters and capabilities given, starts the migration over
/// QMP, shows a progress bar while it runs and a table when it ends (from the final MIGRATION event, since a
/// completed source exits). Exit 0 when completed, 1 when failed or cancelled.
/// </summary>
internal static class MigrateCommand
{
    public static int Run(string[] args)
    {
        var a = CliArguments.Parse(args, "migrate", [.. ParameterOptions.Select(p => p.CliOption!), "report"], [.. CapabilityFlags.Select(c => c.CliFlag!), "quiet"]);
        if (a.Positional.Count != 2 || !a.Positional[0].StartsWith("unix:", StringComparison.Ordinal) || a.Positional[0].Length == 5)
            throw new UsageException($"ferry migrate: usage: ferry migrate unix:SOCK tcp:HOST:PORT {Usage} [--report FILE] [--quiet]");
        var parameters = new JsonObject();
        foreach (var parameter in ParameterOptions)
        {
            if (a.Get(parameter.CliOption!) is { } text)
                parameters[parameter.Name] = ParseOption(parameter, text);
        }
        var report = a.Get("report");
        var quiet = a.Has("quiet") || Console.IsErrorRedirected;

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
                if (parameters.Count > 0)
                    qmp.Execute("migrate-set-parameters", parameters);
                // Every capability with a flag is sent: the flag flips its default, its absence restores the default.
                var capabilities = new JsonArray();
                foreach (var capability in CapabilityFlags)
                    capabilities.Add((JsonNode)new JsonObject { ["capability"] = capability.Name, ["state"] = a.Has(capability.CliFlag!) != capability.Default });
                qmp.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = capabilities });
                qmp.Events.Clear();
                qmp.Execute("migrate", new JsonObject { ["uri"] = a.Positional[1] });
                final = Follow(qmp, quiet);
            }
            catch (QmpException e)
            {
                Console.Error.WriteLine($"ferry: migrate: {e.Class}: {e.Message}");
                return 1;
            }
            if (final is null)
            {
                Console.Error.WriteLine("ferry: migrate: the source closed its QMP socket before the migration finished");
                return 1;
            }
            var status = final["status"]?.GetValue<string>();
            PrintTable(final);
            if (report is not null)
                File.WriteAllText(report, final.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }) + "\n");
            if (status != "completed")
            {
                Console.Error.WriteLine($"ferry: migration {status}: {final["error-desc"]}");
                if (final["ferry"]?["destination-may-be-running"]?.GetValue<bool>() == true)
                    Console.Error.WriteLine("ferry: WARNING: the source VM is paused and the destination may be running the guest; resume the source ('cont') only once the destination is known not to run it");
                return 1;
            }
            return 0;
        }
    }

    /// <summary>The migration parameters `ferry migrate` has an option for (MigrationParameterTable decides which).</summary>
    private static readonly MigrationParameter[] ParameterOptions = [.. MigrationParameterTable.All.Where(p => p.CliOption is not null)];

    /// <summary>The capabilities `ferry migrate` has a flag for.</summary>
    private static readonly MigrationCapability[] CapabilityFlags = [.. MigrationCapabilityTable.All.Where(c => c.CliFlag is not null)];

    /// <summary>"[--max-bandwidth SIZE] [--downtime-limit MS] [--channels N] [--auto-converge] [--no-hint] [--no-balloon-skip]".</summary>
    private static string Usage => string.Join(' ', [
        .. ParameterOptions.Select(p => $"[--{p.CliOption} {Metavar(p.Unit)}]"),
        .. CapabilityFlags.Select(c => $"[--{c.CliFlag}]")]);

    private static string Metavar(ParameterUnit unit) => unit switch
    {
        ParameterUnit.BytesPerSecond => "SIZE",
        ParameterUnit.Milliseconds => "MS",
        ParameterUnit.Percent => "PERCENT",
        _ => "N",
    };

    /// <summary>A size (512M, 1G) for bytes per second, else a positive whole number; the range is the server's to check.</summary>
    private static long ParseOption(MigrationParameter parameter, string text)
    {
        if (parameter.Unit == ParameterUnit.BytesPerSecond)
            return (long)MachineConfig.ParseSize(text, $"--{parameter.CliOption}");
        var what = parameter.Unit == ParameterUnit.Milliseconds ? "number of milliseconds" : "whole number";
        return long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0 ? value
            : throw new UsageException($"ferry migrate: --{parameter.CliOption} '{text}' is not a positive {what}");
    }

    /// <summary>Polls query-migrate for the bar and waits for the final MIGRATION event, which carries the figures.</summary>
    internal static JsonObject? Follow(QmpClient qmp, bool quiet)
    {
        JsonObject? FinalEvent()
        {
            foreach (var e in qmp.Events)
            {
                if (e["event"]?.GetValue<string>() == "MIGRATION" && e["data"]?["ferry-info"] is JsonObject info)
                {
                    if (!quiet)
                        Console.Error.WriteLine();
                    return info;
                }
            }
            qmp.Events.Clear();
            return null;
        }
        while (true)
        {
            if (FinalEvent() is { } done)
                return done;
            JsonObject? now;
            try
            {
                now = qmp.Execute("query-migrate") as JsonObject;
            }
            catch (IOException)
            {
                // The source exits right after the final event; it may be waiting unread behind the close.
                qmp.DrainEvents();
                return FinalEvent();
            }
            if (!quiet && now?["ram"] is JsonObject ram)
            {
                var total = ram["total"]!.GetValue<long>();
                var transferred = ram["transferred"]!.GetValue<long>();
                var remaining = ram["remaining"]!.GetValue<long>();
                var passes = now["ram"]!["dirty-sync-count"]!.GetValue<long>();
                var fraction = total == 0 ? 1.0 : Math.Clamp(1.0 - (double)remaining / total, 0, 1);
                var bar = new string('#', (int)(fraction * 30)).PadRight(30);
                Console.Error.Write($"\r[{bar}] {now["status"]} pass {passes + 1}  sent {transferred / (1024.0 * 1024):F1} MiB  {ram["mbps"]!.GetValue<double>():F0} Mbit/s   ");
            }
            Thread.Sleep(100);
        }
    }

    internal static void PrintTable(JsonObject s)
    {
        var ram = s["ram"]!;
        var f = s["ferry"]!;
        long L(JsonNode? n) => n?.GetValue<long>() ?? 0;
        string Pages(long pages) => $"{pages,12:N0}  ({pages * (long)Page.Size / (1024.0 * 1024),10:F1} MiB)";
        Console.WriteLine($"status               {s["status"]}");
        Console.WriteLine($"total time           {f["total-time-exact-ms"]} ms (setup {s["setup-time"]} ms)");
        Console.WriteLine($"downtime             {(f["downtime-exact-ms"] is { } d ? $"{d} ms" : "-")}");
        Console.WriteLine($"transferred          {L(ram["transferred"]) / (1024.0 * 1024):F1} MiB over {f["channels"]} channel(s), {ram["mbps"]} Mbit/s");
        Console.WriteLine($"passes               {L(ram["dirty-sync-count"])}");
        Console.WriteLine($"pages sent           {Pages(L(ram["normal"]))}");
        Console.WriteLine($"zero pages (runs)    {Pages(L(ram["duplicate"]))}");
        Console.WriteLine($"skipped: untouched   {Pages(L(f["skipped-untouched"]))}");
        Console.WriteLine($"skipped: ballooned   {Pages(L(f["skipped-ballooned"]))}   balloon skip: {f["balloon-skip"]}");
        Console.WriteLine($"skipped: hinted free {Pages(L(f["skipped-hinted"]))}   free page hint: {f["free-page-hint"]}");
        if (L(f["ballooned-sent"]) > 0)
            Console.WriteLine($"ballooned but sent   {Pages(L(f["ballooned-sent"]))}");
        if (s["cpu-throttle-percentage"] is { } throttle)
            Console.WriteLine($"cpu throttle         {throttle}%");
    }
}
