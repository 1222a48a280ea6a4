using System.Text.Json.Nodes;
using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>What `migrate` and `snapshot save` print at the end, from a final MIGRATION event's figures. No KVM needed.</summary>
public sealed class MigrationReportTests
{
    private static JsonObject Final(string status, string? error = null, string? kind = null)
    {
        var passes = new JsonArray();
        for (var pass = 1; pass <= 3; pass++)
        {
            passes.Add((JsonNode)new JsonObject
            {
                ["pass"] = pass, ["duration-ms"] = 12.5 * pass, ["bytes"] = 1L << (22 - pass), ["normal"] = 1000 / pass, ["duplicate"] = 10,
                ["skipped-hinted"] = 0, ["skipped-ballooned"] = 0, ["dirty-pages-after"] = 100 / pass, ["cpu-throttle-percentage"] = 0,
            });
        }
        var final = new JsonObject
        {
            ["status"] = status,
            ["setup-time"] = 3,
            ["ram"] = new JsonObject { ["transferred"] = 7L << 20, ["normal"] = 1833, ["duplicate"] = 30, ["dirty-sync-count"] = 3, ["mbps"] = 812.5 },
            ["ferry"] = new JsonObject
            {
                ["channels"] = 2, ["skipped-untouched"] = 60000, ["skipped-ballooned"] = 0, ["skipped-hinted"] = 0, ["ballooned-sent"] = 0,
                ["balloon-skip"] = "on", ["free-page-hint"] = "on", ["downtime-exact-ms"] = 4.25, ["total-time-exact-ms"] = 80.5, ["passes"] = passes,
            },
        };
        if (error is not null)
            final["error-desc"] = error;
        if (kind is not null)
            final["ferry-error-kind"] = kind;
        return final;
    }

    private static string Print(JsonObject final, bool terminal)
    {
        using var output = new StringWriter();
        MigrationReport.PrintTables(final, output, terminal);
        return output.ToString();
    }

    [Fact]
    public void Without_a_terminal_the_totals_are_the_lines_scripts_read()
    {
        var text = Print(Final("completed"), terminal: false);
        Assert.Contains("status               completed\n", text, StringComparison.Ordinal);
        Assert.Contains("passes               3\n", text, StringComparison.Ordinal);
        Assert.Contains("skipped: untouched         60,000", text, StringComparison.Ordinal);
        Assert.DoesNotContain("\u001b[", text, StringComparison.Ordinal);
    }

    [Fact]
    public void The_pass_table_numbers_every_pass_the_totals_count()
    {
        foreach (var terminal in new[] { false, true })
        {
            var lines = Print(Final("completed"), terminal).Split('\n');
            var header = Array.FindIndex(lines, l => l.Contains("pass", StringComparison.Ordinal) && l.Contains("MiB sent", StringComparison.Ordinal));
            Assert.True(header >= 0, "no pass table");
            var rows = lines.Skip(header + 1).Where(l => l.Any(char.IsDigit)).ToArray();
            Assert.Equal(3, rows.Length);
            for (var i = 0; i < rows.Length; i++)
                Assert.Equal($"{i + 1}", rows[i].Trim(' ', '│', '|').Split(' ', '│')[0]);
        }
    }

    [Fact]
    public void A_failure_shows_its_reason_and_kind()
    {
        var text = Print(Final("failed", "the destination failed: out of memory", "destination-failed"), terminal: false);
        Assert.Contains("error                the destination failed: out of memory (destination-failed)", text, StringComparison.Ordinal);
    }

    [Fact]
    public void The_report_is_indented_json_and_a_bad_path_is_one_line()
    {
        var path = Path.Combine(Path.GetTempPath(), $"ferry-report-{Guid.NewGuid():N}.json");
        try
        {
            MigrationReport.Write(Final("completed"), path);
            Assert.Equal("completed", JsonNode.Parse(File.ReadAllText(path))!["status"]!.GetValue<string>());
        }
        finally
        {
            File.Delete(path);
        }
        var e = Assert.Throws<CliFailureException>(() => MigrationReport.Write(Final("completed"), "/nonexistent/dir/r.json"));
        Assert.StartsWith("--report /nonexistent/dir/r.json: cannot write it", e.Message, StringComparison.Ordinal);
    }
}
