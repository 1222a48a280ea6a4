using System.Globalization;
using System.Net;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Xunit;

namespace Ferry.Cli.Tests.Report;

/// <summary>
/// Reads an HTML report (as written, or as a browser's DOM) back: every element with a data-field, and checks each
/// against the JSON report by its own path walk: the raw value, and the number shown within the precision shown.
/// </summary>
internal static partial class ReportDom
{
    public sealed record Field(string Path, string? Value, double Scale, string Text);

    [GeneratedRegex("""<(span|text|tspan)\b([^>]*?)\bdata-field="([^"]*)"([^>]*)>(.*?)</\1>""", RegexOptions.Singleline)]
    private static partial Regex FieldElement();

    [GeneratedRegex("\\bdata-(value|scale)=\"([^\"]*)\"")]
    private static partial Regex DataAttribute();

    [GeneratedRegex("""(-?[\d,]+(?:\.\d+)?)\s*([A-Za-z/%]*)$""")]
    private static partial Regex NumberWithUnit();

    [GeneratedRegex("<[^>]*>")]
    private static partial Regex Tag();

    public static List<Field> Fields(string html)
    {
        var fields = new List<Field>();
        foreach (Match m in FieldElement().Matches(html))
        {
            string? value = null;
            var scale = 1.0;
            foreach (Match a in DataAttribute().Matches(m.Groups[2].Value + m.Groups[4].Value))
            {
                var v = WebUtility.HtmlDecode(a.Groups[2].Value);
                if (a.Groups[1].Value == "value")
                    value = v;
                else
                    scale = double.Parse(v, CultureInfo.InvariantCulture);
            }
            var text = WebUtility.HtmlDecode(Tag().Replace(m.Groups[5].Value, "")).Trim();
            fields.Add(new Field(WebUtility.HtmlDecode(m.Groups[3].Value), value, scale, text));
        }
        return fields;
    }

    /// <summary>Every data-field of the page matches the JSON; returns the fields seen.</summary>
    public static List<Field> AssertMatches(string html, JsonNode report)
    {
        var fields = Fields(html);
        Assert.NotEmpty(fields);
        foreach (var f in fields)
        {
            var node = At(report, f.Path);
            Assert.True(node is not null, $"data-field {f.Path} is not in the JSON report");
            if (f.Value is null)
            {
                Assert.Equal(node!.GetValue<string>(), f.Text);
                continue;
            }
            Assert.Equal(node!.ToJsonString(), f.Value);
            var json = double.Parse(f.Value, CultureInfo.InvariantCulture);
            if (f.Text == "unlimited")
            {
                Assert.Equal(0, json);
                continue;
            }
            var shown = NumberWithUnit().Match(f.Text);
            Assert.True(shown.Success, $"{f.Path}: '{f.Text}' is not a number with a unit");
            var digits = shown.Groups[1].Value.Replace(",", "", StringComparison.Ordinal);
            var decimals = digits.Contains('.', StringComparison.Ordinal) ? digits.Length - digits.IndexOf('.', StringComparison.Ordinal) - 1 : 0;
            var multiplier = shown.Groups[2].Value switch
            {
                "" or "B" or "B/s" or "ms" or "%" or "pages/s" or "Mbit/s" => 1.0,
                "KiB" or "KiB/s" => 1024.0,
                "MiB" or "MiB/s" => 1024.0 * 1024,
                "GiB" or "GiB/s" => 1024.0 * 1024 * 1024,
                "s" => 1000.0,
                var unit => throw new Xunit.Sdk.XunitException($"{f.Path}: unknown unit '{unit}' in '{f.Text}'"),
            };
            var value = double.Parse(digits, CultureInfo.InvariantCulture) * multiplier;
            var tolerance = 0.5 * Math.Pow(10, -decimals) * multiplier * 1.000001;
            Assert.True(Math.Abs(value - json * f.Scale) <= tolerance,
                $"{f.Path}: shown '{f.Text}' = {value}, JSON {json} x {f.Scale} = {json * f.Scale}");
        }
        return fields;
    }

    /// <summary>The node at "ferry.passes[2].bytes" (the test's own walk, not the renderer's).</summary>
    public static JsonNode? At(JsonNode root, string path)
    {
        JsonNode? node = root;
        foreach (var part in path.Split('.'))
        {
            var open = part.IndexOf('[', StringComparison.Ordinal);
            node = node?[open < 0 ? part : part[..open]];
            if (open >= 0 && node is JsonArray array)
            {
                var index = int.Parse(part[(open + 1)..^1], CultureInfo.InvariantCulture);
                node = index < array.Count ? array[index] : null;
            }
        }
        return node is JsonValue v && v.GetValueKind() is JsonValueKind.Number or JsonValueKind.String ? node : null;
    }
}
