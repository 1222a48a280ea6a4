using System.Globalization;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Kvm;
using Ferry.Machine;

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
        var a = CliArguments.Parse(args, "migrate", ["max-bandwidth", "downtime-limit", "channels", "report"], ["auto-converge", "no-hint", "no-balloon-skip", "quiet"]);
        if (a.Positional.Count != 2 || !a.Positional[0].StartsWith("unix:", StringComparison.Ordinal) || a.Positional[0].Length == 5)
            throw new UsageException("ferry migrate: usage: ferry migrate unix:SOCK tcp:HOST:PORT [--max-bandwidth SIZE] [--downtime-limit MS] [--channels N] [--auto-converge] [--no-hint] [--no-balloon-skip] [--report FILE] [--quiet]");
        var parameters = new JsonObject();
        if (a.Get("max-bandwidth") is { } bandwidth)
            parameters["max-bandwidth"] = (long)MachineConfig.ParseSize(bandwidth, "--max-bandwidth");
        if (a.Get("downtime-limit") is { } downtime)
            parameters["downtime-limit"] = long.TryParse(downtime, CultureInfo.InvariantCulture, out var ms) && ms > 0 ? ms : throw new UsageException($"ferry migrate: --downtime-limit '{downtime}' is not a positive number of milliseconds");
        if (a.Get("channels") is { } channelsText)
            parameters["multifd-channels"] = int.TryParse(channelsText, CultureInfo.InvariantCulture, out var n) && n > 0 ? n : throw new UsageException($"ferry migrate: --channels '{channelsText}' is not a positive whole number");
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
                static JsonObject Cap(string name, bool state) => new() { ["capability"] = name, ["state"] = state };
                qmp.Execute("migrate-set-capabilities", new JsonObject
                {
                    ["capabilities"] = new JsonArray(
                        Cap("auto-converge", a.Has("auto-converge")),
                        Cap("ferry-free-page-hint", !a.Has("no-hint")),
                        Cap("ferry-balloon-skip", !a.Has("no-balloon-skip"))),
                });
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
                return 1;
            }
            return 0;
        }
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
        string Pages(long pages) => $"{pages,12:N0}  ({pages * (long)RamBlock.PageSize / (1024.0 * 1024),10:F1} MiB)";
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
