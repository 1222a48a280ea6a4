using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ferry.Kvm;
using Spectre.Console;

namespace Ferry.Cli;

/// <summary>
/// What `migrate` and `snapshot save` print when the job ends (Spectre.Console tables: the totals, then one row per
/// pass, numbered as the progress display numbered them) and the --report file.
/// </summary>
internal static partial class MigrationReport
{
    /// <summary>
    /// Writes the final figures (the one place --report is written): a page with the timeline when the path ends in
    /// .html (<see cref="Report.HtmlReport"/>), JSON otherwise.
    /// </summary>
    public static void Write(JsonObject final, string path)
    {
        try
        {
            if (path.EndsWith(".html", StringComparison.OrdinalIgnoreCase) || path.EndsWith(".htm", StringComparison.OrdinalIgnoreCase))
                Report.HtmlReport.Write(final, path);
            else
                File.WriteAllText(path, final.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new CliFailureException($"--report {path}: cannot write it ({(e is UnauthorizedAccessException ? "permission denied" : e.Message)})");
        }
    }

    /// <summary>The totals and the passes on stdout; without a terminal the totals are plain "label  value" lines.</summary>
    public static void PrintTables(JsonObject s) => PrintTables(s, Console.Out, terminal: !Console.IsOutputRedirected);

    internal static void PrintTables(JsonObject s, TextWriter output, bool terminal)
    {
        var console = AnsiConsole.Create(new AnsiConsoleSettings
        {
            Out = new AnsiConsoleOutput(output),
            Ansi = terminal ? AnsiSupport.Detect : AnsiSupport.No,
            ColorSystem = terminal ? ColorSystemSupport.Detect : ColorSystemSupport.NoColors,
            Interactive = terminal ? InteractionSupport.Detect : InteractionSupport.No,
        });
        if (terminal)
        {
            var table = new Table { Border = TableBorder.Rounded }.HideHeaders();
            table.AddColumn("figure");
            table.AddColumn("value");
            foreach (var (label, value) in Totals(s))
                table.AddRow(new Text(label), new Text(value));
            console.Write(table);
        }
        else
        {
            // Scripts read these lines: a label padded to 21 columns, then the value.
            console.Profile.Width = 4096;
            foreach (var (label, value) in Totals(s))
                output.WriteLine($"{label,-21}{value}");
        }
        if (Passes(s, terminal) is { } passes)
            console.Write(passes);
    }

    /// <summary>The totals as (label, value) rows: status, times, bytes, passes, pages by class, and the error if any.</summary>
    internal static List<(string Label, string Value)> Totals(JsonObject s)
    {
        var ram = s["ram"]!;
        var f = s["ferry"]!;
        static long L(JsonNode? n) => JsonNumbers.Long(n);
        static string Pages(long pages) => string.Create(CultureInfo.InvariantCulture, $"{pages,12:N0}  ({pages * (long)Page.Size / (1024.0 * 1024),10:F1} MiB)");
        var rows = new List<(string, string)>();
        void Row(string label, string value) => rows.Add((label, value));
        Row("status", $"{s["status"]}");
        Row("total time", $"{f["total-time-exact-ms"]} ms (setup {s["setup-time"]} ms)");
        Row("downtime", f["downtime-exact-ms"] is { } d ? $"{d} ms" : "-");
        Row("transferred", string.Create(CultureInfo.InvariantCulture, $"{L(ram["transferred"]) / (1024.0 * 1024):F1} MiB over {f["channels"]} channel(s), {ram["mbps"]} Mbit/s"));
        Row("passes", $"{L(ram["dirty-sync-count"])}");
        Row("pages sent", Pages(L(ram["normal"])));
        Row("zero pages (runs)", Pages(L(ram["duplicate"])));
        Row("skipped: untouched", Pages(L(f["skipped-untouched"])));
        Row("skipped: ballooned", $"{Pages(L(f["skipped-ballooned"]))}   balloon skip: {f["balloon-skip"]}");
        Row("skipped: hinted free", $"{Pages(L(f["skipped-hinted"]))}   free page hint: {f["free-page-hint"]}");
        if (L(f["ballooned-sent"]) > 0)
            Row("ballooned but sent", Pages(L(f["ballooned-sent"])));
        if (s["cpu-throttle-percentage"] is { } throttle)
            Row("cpu throttle", $"{throttle}%");
        if (f["verified-chunks"] is { } verified)
            Row("verified", $"{L(verified)} chunks of 2 MiB, compared by the destination before it resumed the guest ({f["downtime-phases-ms"]?["verify"]} ms of the downtime here)");
        PostcopyRows(s, Row);
        if (s["error-desc"] is { } error)
            Row("error", $"{error}{(s["ferry-error-kind"] is { } kind ? $" ({kind})" : "")}");
        return rows;
    }

    /// <summary>One row per pass (the final MIGRATION event lists them); null when there are none.</summary>
    internal static Table? Passes(JsonObject s, bool terminal)
    {
        if (s["ferry"]?["passes"] is not JsonArray passes || passes.Count == 0)
            return null;
        var table = new Table { Border = terminal ? TableBorder.Rounded : TableBorder.Simple };
        foreach (var column in new[] { "pass", "ms", "MiB sent", "pages", "zero", "hinted", "ballooned", "dirty after", "throttle %" })
            table.AddColumn(new TableColumn(column).RightAligned());
        static string N(JsonNode? n) => n is null ? "-" : string.Create(CultureInfo.InvariantCulture, $"{JsonNumbers.Double(n):N0}");
        foreach (var p in passes)
        {
            table.AddRow(
                $"{p!["pass"]}",
                string.Create(CultureInfo.InvariantCulture, $"{JsonNumbers.Double(p["duration-ms"]):F1}"),
                string.Create(CultureInfo.InvariantCulture, $"{JsonNumbers.Long(p["bytes"]) / (1024.0 * 1024):F1}"),
                N(p["normal"]), N(p["duplicate"]), N(p["skipped-hinted"]), N(p["skipped-ballooned"]), N(p["dirty-pages-after"]), $"{p["cpu-throttle-percentage"]}");
        }
        return table;
    }
}
