using System.Globalization;
using System.Net;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static System.FormattableString;

namespace Ferry.Cli.Report;

/// <summary>
/// The migration (or snapshot save) report as one self-contained HTML page: inline CSS and SVG, no scripts, nothing
/// fetched. It is a pure function of the JSON report (<c>MigrationJson.ToReport</c>, what <c>--report FILE.json</c>
/// writes), so the page cannot disagree with the JSON: every number shown is read from the JSON by its path and
/// carries that path in <c>data-field</c> (e.g. <c>ferry.passes[2].bytes</c>), the raw JSON value in
/// <c>data-value</c>, and, when what is shown is the value times a factor (pages shown as bytes), that factor in
/// <c>data-scale</c>. Every string from the JSON is HTML-escaped: the report is data.
/// </summary>
public static class HtmlReport
{
    /// <summary>Renders the report and writes it to <paramref name="path"/>.</summary>
    public static void Write(JsonNode report, string path) => File.WriteAllText(path, Render(report), new UTF8Encoding(false));

    /// <summary>The page for a report in the shape of <c>MigrationJson.ToReport</c> (missing fields are shown as "—").</summary>
    public static string Render(JsonNode report)
    {
        ArgumentNullException.ThrowIfNull(report);
        var page = new Page(report);
        return page.Build();
    }

    /// <summary>How a number is shown; the test reads it back with the same units.</summary>
    internal enum Unit
    {
        Count,
        Bytes,
        BytesPerSecond,
        Milliseconds,
        Percent,
        PagesPerSecond,
        Mbps,
    }

    internal static string Format(double value, Unit unit) => unit switch
    {
        Unit.Count => value.ToString("N0", CultureInfo.InvariantCulture),
        Unit.Bytes => FormatBytes(value, ""),
        Unit.BytesPerSecond => FormatBytes(value, "/s"),
        Unit.Milliseconds => Math.Abs(value) >= 1000 ? Invariant($"{value / 1000:F3} s")
            : Math.Abs(value) >= 100 ? Invariant($"{value:F1} ms")
            : Math.Abs(value) >= 1 || value == 0 ? Invariant($"{value:F2} ms") : Invariant($"{value:F3} ms"),
        Unit.Percent => Invariant($"{value:F0}%"),
        Unit.PagesPerSecond => value.ToString("N0", CultureInfo.InvariantCulture) + " pages/s",
        Unit.Mbps => value.ToString("N1", CultureInfo.InvariantCulture) + " Mbit/s",
        _ => throw new ArgumentOutOfRangeException(nameof(unit), unit, null),
    };

    private static string FormatBytes(double value, string suffix)
    {
        string[] units = ["B", "KiB", "MiB", "GiB", "TiB"];
        var i = 0;
        var v = value;
        while (Math.Abs(v) >= 1024 && i < units.Length - 1)
        {
            v /= 1024;
            i++;
        }
        return i == 0 ? Invariant($"{v:F0} {units[i]}{suffix}") : Invariant($"{v:F2} {units[i]}{suffix}");
    }

    /// <summary>The node at a path like <c>ferry.passes[2].bytes</c>, or null.</summary>
    internal static JsonNode? At(JsonNode root, string path)
    {
        JsonNode? node = root;
        foreach (var part in path.Split('.'))
        {
            var name = part;
            var index = -1;
            var bracket = part.IndexOf('[', StringComparison.Ordinal);
            if (bracket >= 0)
            {
                name = part[..bracket];
                index = int.Parse(part[(bracket + 1)..^1], CultureInfo.InvariantCulture);
            }
            node = node is JsonObject o && o.TryGetPropertyValue(name, out var child) ? child : null;
            if (index >= 0)
                node = node is JsonArray a && index < a.Count ? a[index] : null;
            if (node is null)
                return null;
        }
        return node;
    }

    /// <summary>A JSON number as a double, however the node was built (parsed, or from a long or an int).</summary>
    internal static double? Number(JsonNode? node) =>
        node is JsonValue v && v.GetValueKind() == JsonValueKind.Number ? double.Parse(v.ToJsonString(), CultureInfo.InvariantCulture) : null;

    private static string E(string text) => WebUtility.HtmlEncode(text);

    /// <summary>One page being built; holds the report and its scales.</summary>
    private sealed class Page(JsonNode report)
    {
        private readonly StringBuilder _html = new();
        private readonly long _pageSize = (long)(Number(At(report, "ram.page-size")) ?? 4096);

        private static readonly (string Key, string Label, string Color)[] Phases =
        [
            ("pause", "pause", "#7b5ea7"),
            ("dirty-sync", "dirty sync", "#b77fd0"),
            ("final-pass", "final pass", "#2f6bd6"),
            ("verify", "verify", "#c2417a"),
            ("save-state", "save state", "#e0893a"),
            ("complete", "complete", "#3aa57f"),
            ("resume", "resume", "#8a8f98"),
        ];

        private static readonly (string Path, string Label, string Color, string Note)[] Classes =
        [
            ("ram.normal", "sent", "#2f6bd6", "pages with data, sent (a page sent in two passes counts twice)"),
            ("ram.duplicate", "zero", "#93b6ee", "zero pages, sent as zero runs"),
            ("ferry.skipped-untouched", "never touched", "#c7ccd4", "holes in guest memory, never read"),
            ("ferry.skipped-ballooned", "ballooned", "#3aa57f", "in the balloon, skipped"),
            ("ferry.skipped-hinted", "hinted free", "#e6a23c", "free pages the guest hinted, skipped"),
        ];

        public string Build()
        {
            var status = Text("status") ?? "unknown";
            _html.Append("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">")
                .Append("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">")
                .Append("<title>Ferry ").Append(IsSnapshot ? "snapshot save" : "migration").Append(" report: ").Append(E(status)).Append("</title>")
                .Append("<style>").Append(Css).Append("</style></head>\n<body>\n");
            Header(status);
            Timeline();
            PageClasses();
            PassTable();
            _html.Append("<footer>Written by <code>ferry</code> from the same figures as the JSON report.</footer>\n</body></html>\n");
            return _html.ToString();
        }

        private string? Text(string path) => At(report, path) is JsonValue v && v.GetValueKind() == JsonValueKind.String ? v.GetValue<string>() : null;

        private double? Num(string path) => Number(At(report, path));

        /// <summary>A snapshot save's target is its file.</summary>
        private bool IsSnapshot => Text("ferry.target")?.StartsWith("file:", StringComparison.Ordinal) == true;

        /// <summary>The attributes that tie a shown number to its JSON field.</summary>
        private string Attrs(string path, long scale = 1)
        {
            var raw = At(report, path)!.ToJsonString();
            var attrs = Invariant($" data-field=\"{E(path)}\" data-value=\"{E(raw)}\"");
            return scale == 1 ? attrs : attrs + Invariant($" data-scale=\"{scale}\"");
        }

        /// <summary>A number from the JSON as a span, or "—" when the report does not have it.</summary>
        private string Span(string path, Unit unit, long scale = 1, string cls = "num") =>
            Num(path) is { } value ? $"<span class=\"{cls}\"{Attrs(path, scale)}>{E(Format(value * scale, unit))}</span>" : "<span class=\"none\">—</span>";

        /// <summary>A string from the JSON, escaped, as a span.</summary>
        private string StringSpan(string path, string fallback = "—") =>
            Text(path) is { } text ? $"<span data-field=\"{E(path)}\">{E(text)}</span>" : $"<span class=\"none\">{E(fallback)}</span>";

        /// <summary>An SVG text element showing a JSON number.</summary>
        private string SvgNumber(string path, Unit unit, double x, double y, string anchor, string cls, long scale = 1) =>
            Num(path) is { } value
                ? Invariant($"<text x=\"{x:F1}\" y=\"{y:F1}\" text-anchor=\"{anchor}\" class=\"{cls}\"{Attrs(path, scale)}>{E(Format(value * scale, unit))}</text>")
                : "";

        private void Header(string status)
        {
            var kind = IsSnapshot ? "Snapshot save" : "Migration";
            var statusClass = status switch
            {
                "completed" => "ok",
                "failed" => "bad",
                "cancelled" or "cancelling" => "warn",
                _ => "info",
            };
            _html.Append("<header><h1>").Append(kind).Append(" report <span class=\"status ").Append(statusClass).Append("\" data-field=\"status\">")
                .Append(E(status)).Append("</span></h1>\n");
            _html.Append("<p class=\"route\">").Append(StringSpan("ferry.source", "source not recorded")).Append(" <span class=\"arrow\">→</span> ")
                .Append(StringSpan("ferry.target", "destination not recorded")).Append("</p>\n");
            if (Text("error-desc") is not null)
                _html.Append("<div class=\"error\"><b>Error:</b> ").Append(StringSpan("error-desc")).Append("</div>\n");
            _html.Append("<div class=\"cards\">");
            Card("total time", Span("ferry.total-time-exact-ms", Unit.Milliseconds), "setup " + Span("setup-time", Unit.Milliseconds));
            Card("downtime", Span("ferry.downtime-exact-ms", Unit.Milliseconds),
                Num("ferry.downtime-limit") is not null ? "limit " + Span("ferry.downtime-limit", Unit.Milliseconds) : "");
            Card("transferred", Span("ram.transferred", Unit.Bytes), "of " + Span("ram.total", Unit.Bytes) + " RAM");
            Card("passes", Span("ram.dirty-sync-count", Unit.Count), "average " + Span("ram.mbps", Unit.Mbps));
            Card("channels", Span("ferry.channels", Unit.Count), "");
            Card("max-bandwidth", Num("ferry.max-bandwidth") is > 0 ? Span("ferry.max-bandwidth", Unit.BytesPerSecond)
                : Num("ferry.max-bandwidth") is not null ? $"<span class=\"num\"{Attrs("ferry.max-bandwidth")}>unlimited</span>" : "<span class=\"none\">—</span>", "");
            if (Num("cpu-throttle-percentage") is not null)
                Card("cpu throttle", Span("cpu-throttle-percentage", Unit.Percent), "");
            _html.Append("</div>\n<dl class=\"facts\">");
            Fact("balloon skip", StringSpan("ferry.balloon-skip"));
            Fact("free page hint", StringSpan("ferry.free-page-hint"));
            if (Text("ferry.not-converging") is not null)
                Fact("not converging", StringSpan("ferry.not-converging"));
            _html.Append("</dl></header>\n");
        }

        private void Card(string label, string value, string detail) =>
            _html.Append("<div class=\"card\"><div class=\"label\">").Append(E(label)).Append("</div><div class=\"value\">").Append(value)
                .Append("</div><div class=\"detail\">").Append(detail).Append("</div></div>");

        private void Fact(string label, string value) =>
            _html.Append("<dt>").Append(E(label)).Append("</dt><dd>").Append(value).Append("</dd>");

        private int PassCount => At(report, "ferry.passes") is JsonArray a ? a.Count : 0;

        private void Timeline()
        {
            _html.Append("<section><h2>Timeline</h2><p class=\"hint\">Each bar is one pass: its width is how long it took, its height the throughput it reached");
            if (Num("ferry.max-bandwidth") is > 0)
                _html.Append(" against the bandwidth limit (dashed)");
            _html.Append("; the red line is the guest's dirty rate.");
            if (At(report, "ferry.downtime-phases-ms") is JsonObject)
                _html.Append(" The downtime (red band) is drawn enlarged below the time axis, split into its phases.");
            _html.Append("</p>\n");

            const double W = 1100, left = 78, right = 24, top = 34, plotH = 220;
            var plotW = W - left - right;
            var passes = PassCount;
            var hasPhases = At(report, "ferry.downtime-phases-ms") is JsonObject;
            var height = top + plotH + 44 + (hasPhases ? 122 : 0);
            var total = Math.Max(Num("ferry.total-time-exact-ms") ?? 0, 0);
            var setup = Math.Max(Num("setup-time") ?? 0, 0);
            var downtime = Num("ferry.downtime-exact-ms") ?? 0;

            // Where each pass starts: live passes follow the setup one after another; a completed migration's final
            // pass runs inside the downtime, after the pause and the last sync.
            var starts = new double[passes];
            var t = setup;
            for (var i = 0; i < passes; i++)
            {
                starts[i] = t;
                t += Math.Max(Num($"ferry.passes[{i}].duration-ms") ?? 0, 0);
            }
            if (hasPhases && passes > 0)
                starts[^1] = Math.Max(total - downtime, 0) + (Num("ferry.downtime-phases-ms.pause") ?? 0) + (Num("ferry.downtime-phases-ms.dirty-sync") ?? 0);
            var end = passes > 0 ? starts[^1] + (Num($"ferry.passes[{passes - 1}].duration-ms") ?? 0) : 0;
            var span = Math.Max(Math.Max(total, end), 1e-3);
            double X(double ms) => left + Math.Clamp(ms / span, 0, 1) * plotW;

            var limit = Math.Max(Num("ferry.max-bandwidth") ?? 0, 0);
            var yMax = limit;
            for (var i = 0; i < passes; i++)
            {
                yMax = Math.Max(yMax, Num($"ferry.passes[{i}].bandwidth-bytes-per-second") ?? 0);
                yMax = Math.Max(yMax, (Num($"ferry.passes[{i}].dirty-pages-rate") ?? 0) * _pageSize);
            }
            var (yTop, yStep, yUnit, yName) = RateScale(yMax <= 0 ? 1 << 20 : yMax * 1.08);
            double Y(double v) => top + plotH - Math.Clamp(v / yTop, 0, 1) * plotH;

            var svg = new StringBuilder();
            svg.Append(Invariant($"<svg class=\"timeline\" viewBox=\"0 0 {W} {height:F0}\" width=\"{W}\" height=\"{height:F0}\" role=\"img\" aria-label=\"timeline\" xmlns=\"http://www.w3.org/2000/svg\">"));
            // Legend.
            svg.Append(Invariant($"<g class=\"legend\"><rect x=\"{left}\" y=\"8\" width=\"14\" height=\"12\" fill=\"#2f6bd6\"/><text x=\"{left + 20}\" y=\"18\">throughput per pass</text>"));
            svg.Append(Invariant($"<line x1=\"{left + 170}\" y1=\"14\" x2=\"{left + 196}\" y2=\"14\" stroke=\"#d6453d\" stroke-width=\"2.5\"/><circle cx=\"{left + 183}\" cy=\"14\" r=\"3.5\" fill=\"#d6453d\"/><text x=\"{left + 202}\" y=\"18\">dirty rate</text>"));
            if (limit > 0)
                svg.Append(Invariant($"<line x1=\"{left + 290}\" y1=\"14\" x2=\"{left + 316}\" y2=\"14\" stroke=\"#333\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/><text x=\"{left + 322}\" y=\"18\">bandwidth limit</text>"));
            if (setup > 0)
                svg.Append(Invariant($"<rect x=\"{W - right - 290}\" y=\"8\" width=\"14\" height=\"12\" fill=\"#eceef2\" stroke=\"#c7ccd4\"/><text x=\"{W - right - 270}\" y=\"18\">setup</text>"));
            if (downtime > 0)
                svg.Append(Invariant($"<rect x=\"{W - right - 210}\" y=\"8\" width=\"14\" height=\"12\" fill=\"#f6d5d3\" stroke=\"#d6453d\"/><text x=\"{W - right - 190}\" y=\"18\">downtime (guest paused)</text>"));
            svg.Append("</g>");

            // Grid and y axis (bytes per second).
            for (var k = 0; k * yStep <= yTop * (1 + 1e-9) && passes > 0; k++)
            {
                var v = k * yStep;
                var y = Y(v);
                svg.Append(Invariant($"<line x1=\"{left}\" y1=\"{y:F1}\" x2=\"{W - right}\" y2=\"{y:F1}\" class=\"grid\"/>"));
                svg.Append(Invariant($"<text x=\"{left - 6}\" y=\"{y + 4:F1}\" text-anchor=\"end\" class=\"axis\">{v / yUnit:0.##} {yName}</text>"));
            }
            // Setup and downtime bands.
            if (setup > 0)
                svg.Append(Invariant($"<rect x=\"{left}\" y=\"{top}\" width=\"{Math.Max(X(setup) - left, 1):F1}\" height=\"{plotH}\" fill=\"#eceef2\"/>"));
            if (downtime > 0)
            {
                var x0 = X(total - downtime);
                svg.Append(Invariant($"<rect x=\"{x0:F1}\" y=\"{top}\" width=\"{Math.Max(X(total) - x0, 2):F1}\" height=\"{plotH}\" fill=\"#f6d5d3\" stroke=\"#d6453d\" stroke-width=\"0.8\"/>"));
            }

            if (passes == 0)
                svg.Append(Invariant($"<text x=\"{left + plotW / 2:F1}\" y=\"{top + plotH / 2:F1}\" text-anchor=\"middle\" class=\"empty\">no pass ran</text>"));
            var lastLabel = double.NegativeInfinity;
            var dirtyPoints = new List<string>();
            for (var i = 0; i < passes; i++)
            {
                var p = $"ferry.passes[{i}]";
                var x0 = X(starts[i]);
                var x1 = X(starts[i] + (Num(p + ".duration-ms") ?? 0));
                var width = x1 - x0;
                if (width > 4)
                {
                    x0 += 0.5;
                    width -= 1;
                }
                width = Math.Max(width, 1.5);
                var bandwidth = Num(p + ".bandwidth-bytes-per-second") ?? 0;
                var y = Y(bandwidth);
                svg.Append(Invariant($"<rect class=\"pass\" x=\"{x0:F1}\" y=\"{y:F1}\" width=\"{width:F1}\" height=\"{top + plotH - y:F1}\" fill=\"#2f6bd6\"><title>pass {i + 1}: {E(Format(bandwidth, Unit.BytesPerSecond))}</title></rect>"));
                var cx = x0 + width / 2;
                // The throughput inside a tall enough bar, else above it.
                if (width >= 90)
                {
                    var inside = top + plotH - y >= 26;
                    svg.Append(SvgNumber(p + ".bandwidth-bytes-per-second", Unit.BytesPerSecond, cx, inside ? y + 17 : y - 5, "middle", inside ? "inbar" : "barlabel"));
                }
                // Pass numbers where they do not run into each other (the table lists every pass).
                var passLabel = Invariant($"{(passes <= 12 ? "pass " : "")}{i + 1}");
                var labelWidth = passLabel.Length * 7 + 6;
                if (cx - lastLabel >= labelWidth && (i == passes - 1 || cx + labelWidth <= W - right))
                {
                    svg.Append(Invariant($"<text x=\"{cx:F1}\" y=\"{top + plotH + 14}\" text-anchor=\"middle\" class=\"passno\">{passLabel}</text>"));
                    lastLabel = cx;
                }
                var dirty = (Num(p + ".dirty-pages-rate") ?? 0) * _pageSize;
                dirtyPoints.Add(Invariant($"{cx:F1},{Y(dirty):F1}"));
            }
            if (dirtyPoints.Count > 1)
                svg.Append("<polyline fill=\"none\" stroke=\"#d6453d\" stroke-width=\"2\" points=\"").Append(string.Join(' ', dirtyPoints)).Append("\"/>");
            if (passes <= 60)
            {
                foreach (var point in dirtyPoints)
                {
                    var xy = point.Split(',');
                    svg.Append($"<circle cx=\"{xy[0]}\" cy=\"{xy[1]}\" r=\"3.5\" fill=\"#d6453d\"/>");
                }
            }
            if (limit > 0)
            {
                var y = Y(limit);
                svg.Append(Invariant($"<line x1=\"{left}\" y1=\"{y:F1}\" x2=\"{W - right}\" y2=\"{y:F1}\" stroke=\"#333\" stroke-dasharray=\"6 4\" stroke-width=\"1.5\"/>"));
                svg.Append("<text class=\"limit\"").Append(Invariant($" x=\"{W - right - 4}\" y=\"{y - 5:F1}\" text-anchor=\"end\"")).Append(Attrs("ferry.max-bandwidth")).Append('>')
                    .Append("limit ").Append(E(Format(limit, Unit.BytesPerSecond))).Append("</text>");
            }
            // Time axis.
            var axisY = top + plotH;
            svg.Append(Invariant($"<line x1=\"{left}\" y1=\"{axisY}\" x2=\"{W - right}\" y2=\"{axisY}\" stroke=\"#555\"/>"));
            var step = NiceStep(span / 8);
            for (var ms = 0.0; ms <= span + step * 1e-9; ms += step)
            {
                var x = X(ms);
                svg.Append(Invariant($"<line x1=\"{x:F1}\" y1=\"{axisY}\" x2=\"{x:F1}\" y2=\"{axisY + 4}\" stroke=\"#555\"/>"));
                var tick = step >= 1000 ? Invariant($"{ms / 1000:0.###} s") : Invariant($"{ms:0.###} ms");
                svg.Append(Invariant($"<text x=\"{x:F1}\" y=\"{axisY + 30}\" text-anchor=\"middle\" class=\"axis\">{tick}</text>"));
            }
            if (hasPhases)
                DowntimeBar(svg, X(total - downtime), X(total), left, plotW, axisY + 56);
            svg.Append("</svg>");
            _html.Append("<div class=\"figure\">").Append(svg).Append("</div></section>\n");
        }

        /// <summary>The downtime phases, enlarged to the plot's width, joined to where the downtime sits on the time axis.</summary>
        private void DowntimeBar(StringBuilder svg, double from, double to, double left, double width, double y)
        {
            const double barH = 30;
            var total = 0.0;
            foreach (var (key, _, _) in Phases)
                total += Math.Max(Num("ferry.downtime-phases-ms." + key) ?? 0, 0);
            svg.Append(Invariant($"<path d=\"M{from:F1},{y - 52} L{from:F1},{y - 20} L{left:F1},{y + 16} M{Math.Max(to, from + 2):F1},{y - 52} L{Math.Max(to, from + 2):F1},{y - 20} L{left + width:F1},{y + 16}\" stroke=\"#d6453d\" stroke-dasharray=\"3 3\" fill=\"none\"/>"));
            // The title sits at the right, where the joining lines (the downtime is at the end) do not cross it.
            svg.Append(Invariant($"<text x=\"{left + width - 6:F1}\" y=\"{y + 8}\" text-anchor=\"end\" class=\"dtitle\">downtime, enlarged: "));
            if (Num("ferry.downtime-exact-ms") is { } downtime)
                svg.Append("<tspan").Append(Attrs("ferry.downtime-exact-ms")).Append('>').Append(E(Format(downtime, Unit.Milliseconds))).Append("</tspan>");
            svg.Append("</text>");
            var barY = y + 16;
            var x = left;
            var legendX = left;
            foreach (var (key, label, color) in Phases)
            {
                var path = "ferry.downtime-phases-ms." + key;
                var ms = Math.Max(Num(path) ?? 0, 0);
                var w = total > 0 ? ms / total * width : 0;
                if (w > 0)
                {
                    svg.Append(Invariant($"<rect x=\"{x:F1}\" y=\"{barY}\" width=\"{Math.Max(w, 1):F1}\" height=\"{barH}\" fill=\"{color}\" stroke=\"#fff\" stroke-width=\"1\"><title>{E(label)}: {E(Format(ms, Unit.Milliseconds))}</title></rect>"));
                    if (w >= 110)
                    {
                        svg.Append(Invariant($"<text x=\"{x + w / 2:F1}\" y=\"{barY + 19}\" text-anchor=\"middle\" class=\"inbar\">{E(label)} </text>"));
                    }
                }
                x += w;
                // The legend below names every phase with its time, so a thin segment is still read.
                svg.Append(Invariant($"<rect x=\"{legendX:F1}\" y=\"{barY + barH + 12}\" width=\"12\" height=\"12\" fill=\"{color}\"/>"));
                svg.Append(Invariant($"<text x=\"{legendX + 17:F1}\" y=\"{barY + barH + 22}\" class=\"plabel\">{E(label)}</text>"));
                svg.Append(SvgNumber(path, Unit.Milliseconds, legendX + 17, barY + barH + 38, "start", "pvalue"));
                legendX += width / Phases.Length;
            }
        }

        private void PageClasses()
        {
            _html.Append("<section><h2>Pages by class</h2><p class=\"hint\">What happened to each page of guest memory: only pages with data cost bandwidth.</p>\n");
            var sum = 0.0;
            foreach (var c in Classes)
                sum += Math.Max(Num(c.Path) ?? 0, 0);
            const double W = 1100, H = 34;
            var svg = new StringBuilder(Invariant($"<svg class=\"pages\" viewBox=\"0 0 {W} {H}\" width=\"{W}\" height=\"{H}\" role=\"img\" aria-label=\"pages by class\" xmlns=\"http://www.w3.org/2000/svg\">"));
            if (sum <= 0)
            {
                svg.Append(Invariant($"<rect x=\"0\" y=\"0\" width=\"{W}\" height=\"{H}\" fill=\"#f1f2f5\"/><text x=\"{W / 2}\" y=\"22\" text-anchor=\"middle\" class=\"empty\">no pages</text>"));
            }
            else
            {
                var x = 0.0;
                foreach (var (path, label, color, _) in Classes)
                {
                    var pages = Math.Max(Num(path) ?? 0, 0);
                    var w = pages / sum * W;
                    if (w <= 0)
                        continue;
                    svg.Append(Invariant($"<rect x=\"{x:F1}\" y=\"0\" width=\"{Math.Max(w, 1):F1}\" height=\"{H}\" fill=\"{color}\"><title>{E(label)}: {pages:F0} pages</title></rect>"));
                    if (w >= 90)
                        svg.Append(Invariant($"<text x=\"{x + w / 2:F1}\" y=\"22\" text-anchor=\"middle\" class=\"{(color == "#2f6bd6" || color == "#3aa57f" ? "inbar" : "inbardark")}\">{E(label)} {pages / sum * 100:F0}%</text>"));
                    x += w;
                }
            }
            svg.Append("</svg>");
            _html.Append("<div class=\"figure\">").Append(svg).Append("</div>\n<table class=\"classes\"><thead><tr><th>class</th><th>pages</th><th>size</th><th>share</th><th></th></tr></thead><tbody>\n");
            foreach (var (path, label, color, note) in Classes)
            {
                var pages = Math.Max(Num(path) ?? 0, 0);
                _html.Append("<tr><td><span class=\"swatch\" style=\"background:").Append(color).Append("\"></span>").Append(E(label)).Append("</td><td>")
                    .Append(Span(path, Unit.Count)).Append("</td><td>").Append(Span(path, Unit.Bytes, _pageSize)).Append("</td><td>")
                    .Append(E(sum > 0 ? Invariant($"{pages / sum * 100:F1}%") : "—")).Append("</td><td class=\"note\">").Append(E(note)).Append("</td></tr>\n");
            }
            if (Num("ferry.ballooned-sent") is > 0)
            {
                _html.Append("<tr><td>ballooned but sent</td><td>").Append(Span("ferry.ballooned-sent", Unit.Count)).Append("</td><td>")
                    .Append(Span("ferry.ballooned-sent", Unit.Bytes, _pageSize)).Append("</td><td></td><td class=\"note\">counted in sent: the balloon was not trusted</td></tr>\n");
            }
            _html.Append("</tbody></table></section>\n");
        }

        private void PassTable()
        {
            _html.Append("<section><h2>Passes</h2>\n");
            if (PassCount == 0)
            {
                _html.Append("<p class=\"empty\">No pass ran.</p></section>\n");
                return;
            }
            (string Field, string Head, Unit Unit, long Scale)[] columns =
            [
                ("pass", "pass", Unit.Count, 1),
                ("duration-ms", "duration", Unit.Milliseconds, 1),
                ("bytes", "bytes sent", Unit.Bytes, 1),
                ("bandwidth-bytes-per-second", "throughput", Unit.BytesPerSecond, 1),
                ("normal", "pages sent", Unit.Count, 1),
                ("duplicate", "zero pages", Unit.Count, 1),
                ("skipped-hinted", "hinted", Unit.Count, 1),
                ("skipped-ballooned", "ballooned", Unit.Count, 1),
                ("dirty-pages-after", "dirty after", Unit.Count, 1),
                ("dirty-pages-rate", "dirty rate", Unit.BytesPerSecond, _pageSize),
                ("expected-downtime-ms", "expected downtime", Unit.Milliseconds, 1),
                ("cpu-throttle-percentage", "throttle", Unit.Percent, 1),
            ];
            _html.Append("<div class=\"figure\"><table class=\"passes\"><thead><tr>");
            foreach (var c in columns)
                _html.Append("<th>").Append(E(c.Head)).Append("</th>");
            _html.Append("</tr></thead><tbody>\n");
            var hasPhases = At(report, "ferry.downtime-phases-ms") is JsonObject;
            for (var i = 0; i < PassCount; i++)
            {
                _html.Append(hasPhases && i == PassCount - 1 ? "<tr class=\"final\">" : "<tr>");
                foreach (var c in columns)
                    _html.Append("<td>").Append(Span($"ferry.passes[{i}].{c.Field}", c.Unit, c.Scale)).Append("</td>");
                _html.Append("</tr>\n");
            }
            _html.Append("</tbody></table></div>");
            if (hasPhases)
                _html.Append("<p class=\"hint\">The last pass (shaded) ran with the guest paused, inside the downtime.</p>");
            _html.Append("</section>\n");
        }

        /// <summary>The top of a rate axis with four round steps in B/s, KiB/s, MiB/s or GiB/s, and that unit.</summary>
        private static (double Top, double Step, double Unit, string Name) RateScale(double max)
        {
            var (unit, name) = max >= 1 << 30 ? (1024.0 * 1024 * 1024, "GiB/s") : max >= 1 << 20 ? (1024.0 * 1024, "MiB/s") : max >= 1024 ? (1024.0, "KiB/s") : (1.0, "B/s");
            var step = NiceStep(max / unit / 4);
            return (Math.Ceiling(max / unit / step - 1e-9) * step * unit, step * unit, unit, name);
        }

        /// <summary>A round step (1, 2, 2.5 or 5 times a power of ten; powers of 1024 for byte rates are not needed at axis precision).</summary>
        private static double NiceStep(double raw)
        {
            if (raw <= 0)
                return 1;
            var power = Math.Pow(10, Math.Floor(Math.Log10(raw)));
            var f = raw / power;
            return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 2.5 ? 2.5 : f <= 5 ? 5 : 10) * power;
        }

        private const string Css = """
            :root { color-scheme: light; }
            body { font: 14px/1.45 "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: #1f2430; background: #f7f8fa; margin: 0; padding: 24px 32px; }
            h1 { font-size: 22px; margin: 0 0 4px; display: flex; align-items: center; gap: 12px; }
            h2 { font-size: 16px; margin: 0 0 4px; }
            header, section { background: #fff; border: 1px solid #e1e4ea; border-radius: 8px; padding: 16px 20px; margin: 0 0 16px; max-width: 1140px; }
            .status { font-size: 13px; font-weight: 600; padding: 2px 10px; border-radius: 12px; text-transform: uppercase; letter-spacing: .04em; }
            .status.ok { background: #dcf3e8; color: #17704a; } .status.bad { background: #fbe0de; color: #a3241c; }
            .status.warn { background: #fdf0d5; color: #8a5a00; } .status.info { background: #e3ebfa; color: #234c9c; }
            .route { margin: 2px 0 12px; color: #4a5163; font-family: "DejaVu Sans Mono", monospace; font-size: 13px; overflow-wrap: anywhere; }
            .arrow { color: #8a8f98; margin: 0 6px; }
            .error { background: #fbe0de; color: #7d1a13; border-radius: 6px; padding: 8px 12px; margin: 0 0 12px; overflow-wrap: anywhere; }
            .cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(125px, 1fr)); gap: 10px; }
            .card { background: #f7f8fa; border-radius: 6px; padding: 8px 12px; }
            .card .label { font-size: 12px; color: #6b7280; text-transform: uppercase; letter-spacing: .04em; }
            .card .value { font-size: 20px; font-weight: 600; }
            .card .detail { font-size: 12px; color: #6b7280; min-height: 1em; }
            .facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 12px; margin: 12px 0 0; font-size: 13px; }
            .facts dt { color: #6b7280; } .facts dd { margin: 0; overflow-wrap: anywhere; }
            .hint { color: #6b7280; margin: 0 0 8px; font-size: 13px; }
            .figure { overflow-x: auto; }
            svg { display: block; max-width: 100%; height: auto; font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; }
            svg text { font-size: 12px; fill: #1f2430; }
            svg .axis { fill: #6b7280; font-size: 11px; } svg .grid { stroke: #e6e8ee; }
            svg .passno { font-size: 11px; fill: #4a5163; } svg .barlabel { font-size: 11px; font-weight: 600; fill: #1d4796; }
            svg .limit { font-size: 11px; fill: #333; } svg .empty { fill: #8a8f98; font-size: 14px; }
            svg .dtitle { font-weight: 600; fill: #a3241c; } svg .inbar { fill: #fff; font-weight: 600; } svg .inbardark { fill: #1f2430; font-weight: 600; }
            svg .plabel { font-size: 12px; } svg .pvalue { font-size: 12px; font-weight: 600; }
            table { border-collapse: collapse; font-size: 13px; margin-top: 10px; }
            table.passes { width: 100%; }
            th { text-align: right; color: #6b7280; font-weight: 600; padding: 4px 7px; border-bottom: 1px solid #e1e4ea; vertical-align: bottom; }
            td { text-align: right; padding: 3px 7px; border-bottom: 1px solid #f0f1f4; white-space: nowrap; font-variant-numeric: tabular-nums; }
            th:first-child, td:first-child { text-align: left; }
            table.classes td.note { text-align: left; color: #6b7280; white-space: normal; }
            tr.final td { background: #fbeeed; }
            .swatch { display: inline-block; width: 12px; height: 12px; border-radius: 2px; margin-right: 8px; vertical-align: -1px; }
            .none { color: #a0a5ae; }
            footer { color: #8a8f98; font-size: 12px; max-width: 1140px; }
            """;
    }
}
