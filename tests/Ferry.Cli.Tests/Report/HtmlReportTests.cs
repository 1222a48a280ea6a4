using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using System.Xml;
using Ferry.Cli.Report;
using Xunit;

namespace Ferry.Cli.Tests.Report;

/// <summary>The HTML report without a browser: every number is the JSON's, strings are escaped, edge cases render.</summary>
public sealed partial class HtmlReportTests
{
    public static TheoryData<string> Samples => ["completed", "completed-1-pass", "completed-55-passes", "completed-no-limit", "snapshot", "failed-no-pass", "cancelled-1-pass"];

    internal static JsonObject Sample(string name) => name switch
    {
        "completed" => ReportSamples.Completed(),
        "completed-1-pass" => ReportSamples.Completed(passes: 1),
        "completed-55-passes" => ReportSamples.Completed(passes: 55),
        "completed-no-limit" => ReportSamples.Completed(maxBandwidth: 0),
        "snapshot" => ReportSamples.Completed(passes: 2, maxBandwidth: 0, target: "file:/var/lib/ferry/vm-7.snap"),
        "failed-no-pass" => ReportSamples.FailedBeforeAnyPass(),
        "cancelled-1-pass" => ReportSamples.CancelledAfterOnePass(),
        _ => throw new ArgumentException(name, nameof(name)),
    };

    [Theory]
    [MemberData(nameof(Samples))]
    public void Every_number_shown_is_the_JSON_value(string sample)
    {
        var report = Sample(sample);
        var html = HtmlReport.Render(report);
        var fields = ReportDom.AssertMatches(html, report);
        var paths = fields.Select(f => f.Path).ToHashSet();

        // The header, the page classes and every figure of every pass are shown.
        string[] always = ["status", "ferry.target", "ferry.source", "ferry.total-time-exact-ms", "setup-time", "ram.transferred", "ram.total",
            "ferry.channels", "ferry.max-bandwidth", "ram.normal", "ram.duplicate", "ferry.skipped-untouched", "ferry.skipped-ballooned",
            "ferry.skipped-hinted", "ferry.balloon-skip", "ferry.free-page-hint"];
        foreach (var path in always)
            Assert.Contains(path, paths);
        var passes = report["ferry"]!["passes"]!.AsArray();
        for (var i = 0; i < passes.Count; i++)
        {
            foreach (var (key, _) in passes[i]!.AsObject())
                Assert.Contains($"ferry.passes[{i}].{key}", paths);
        }
        if (report["ferry"]!["downtime-phases-ms"] is JsonObject phases)
        {
            Assert.Contains("ferry.downtime-exact-ms", paths);
            foreach (var (key, _) in phases)
                Assert.Contains($"ferry.downtime-phases-ms.{key}", paths);
        }
        if (report["error-desc"] is not null)
            Assert.Contains("error-desc", paths);
    }

    [Theory]
    [MemberData(nameof(Samples))]
    public void The_page_is_self_contained_and_its_SVG_well_formed(string sample)
    {
        var html = HtmlReport.Render(Sample(sample));
        Assert.StartsWith("<!DOCTYPE html>", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<script", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotMatch(ExternalResource(), html);
        var svgs = Svg().Matches(html);
        Assert.Equal(2, svgs.Count);
        foreach (Match svg in svgs)
            new XmlDocument().LoadXml(svg.Value);
    }

    [Fact]
    public void Edge_cases_say_what_happened()
    {
        var failed = HtmlReport.Render(ReportSamples.FailedBeforeAnyPass());
        Assert.Contains("no pass ran", failed, StringComparison.Ordinal);
        Assert.Contains("No pass ran.", failed, StringComparison.Ordinal);
        Assert.Contains("class=\"status bad\"", failed, StringComparison.Ordinal);
        Assert.Contains("Connection refused", failed, StringComparison.Ordinal);
        Assert.Contains("auto-converge is off", failed, StringComparison.Ordinal);

        var noLimit = HtmlReport.Render(ReportSamples.Completed(maxBandwidth: 0));
        Assert.Contains(">unlimited<", noLimit, StringComparison.Ordinal);
        Assert.DoesNotContain("bandwidth limit", noLimit, StringComparison.Ordinal);
        Assert.Contains("bandwidth limit", HtmlReport.Render(ReportSamples.Completed()), StringComparison.Ordinal);

        var many = HtmlReport.Render(ReportSamples.Completed(passes: 55));
        Assert.Equal(55, Regex.Count(many, "<rect class=\"pass\""));
        Assert.Equal(55, Regex.Count(many, "<tr( class=\"final\")?><td><span class=\"num\" data-field=\"ferry.passes\\["));

        Assert.Contains("Snapshot save report", HtmlReport.Render(Sample("snapshot")), StringComparison.Ordinal);
        Assert.Contains("class=\"status warn\"", HtmlReport.Render(ReportSamples.CancelledAfterOnePass()), StringComparison.Ordinal);
        // A report with nothing in it (an older or foreign JSON) still renders.
        Assert.Contains("<svg", HtmlReport.Render(new JsonObject()), StringComparison.Ordinal);
    }

    [Fact]
    public void Hostile_strings_are_escaped()
    {
        const string hostile = "</span><script>alert(1)</script><img src=x onerror=alert(2)>\"' & <svg onload=alert(3)>";
        var report = ReportSamples.FailedBeforeAnyPass(error: hostile, target: "tcp:\"><script>x</script>:1");
        report["ferry"]!["source"] = "unix:<blink>bold</blink>";
        report["ferry"]!["balloon-skip"] = "off: <iframe src=//evil>";
        var html = HtmlReport.Render(report);
        Assert.DoesNotContain("<script", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("<img", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("<iframe", html, StringComparison.OrdinalIgnoreCase);
        Assert.DoesNotContain("<blink", html, StringComparison.Ordinal);
        Assert.DoesNotContain("<svg onload", html, StringComparison.Ordinal);
        // Escaped, the strings still read as they were.
        var fields = ReportDom.AssertMatches(html, report);
        Assert.Equal(hostile, fields.Single(f => f.Path == "error-desc").Text);
        Assert.Equal("unix:<blink>bold</blink>", fields.Single(f => f.Path == "ferry.source").Text);
    }

    [Fact]
    public void Write_writes_what_Render_returns()
    {
        var report = ReportSamples.Completed();
        var path = Path.Combine(Path.GetTempPath(), $"ferry-report-{Guid.NewGuid():N}.html");
        try
        {
            HtmlReport.Write(report, path);
            Assert.Equal(HtmlReport.Render(report), File.ReadAllText(path));
        }
        finally
        {
            File.Delete(path);
        }
    }

    [GeneratedRegex("<svg\\b.*?</svg>", RegexOptions.Singleline)]
    private static partial Regex Svg();

    /// <summary>Anything a browser would fetch: src/href attributes, CSS url() or @import.</summary>
    [GeneratedRegex("""\s(src|href)\s*=|url\(|@import""", RegexOptions.IgnoreCase)]
    private static partial Regex ExternalResource();
}
