using System.Globalization;
using System.Text.Json.Nodes;

namespace Ferry.Cli;

/// <summary>The final table's postcopy rows (when the migration switched to postcopy): what was owed and how it came, the faults and their latency, the blocktime.</summary>
internal static partial class MigrationReport
{
    private static void PostcopyRows(JsonObject s, Action<string, string> row)
    {
        if (s["ferry"]?["postcopy"] is not JsonObject p)
            return;
        static long L(JsonNode? n) => JsonNumbers.Long(n);
        static string D(JsonNode? n) => string.Create(CultureInfo.InvariantCulture, $"{JsonNumbers.Double(n):0.###}");
        row("postcopy", string.Create(CultureInfo.InvariantCulture,
            $"{L(p["owed-pages"]):N0} pages owed at the switch: {L(p["background-pages"]):N0} in the background, {L(p["urgent-pages"]):N0} on request; {D(p["active-ms"])} ms"));
        row("postcopy-requests", string.Create(CultureInfo.InvariantCulture,
            $"{L(s["ram"]?["postcopy-requests"]):N0} ({L(p["requests-for-sent-pages"]):N0} for pages already on their way)"));
        if (p["fault-latency-us"] is JsonObject latency)
        {
            row("postcopy faults", string.Create(CultureInfo.InvariantCulture,
                $"{L(p["faults"]):N0}; fault to page: p50 {D(latency["p50"])} µs, p99 {D(latency["p99"])} µs, max {D(latency["max"])} µs"));
            var perVcpu = s["postcopy-vcpu-blocktime"] is JsonArray each ? string.Join(", ", each.Select(n => $"{n}")) : "-";
            row("postcopy-blocktime", $"{D(p["blocktime-ms"])} ms all vCPUs blocked; per vCPU (ms): {perVcpu}");
        }
        if (L(p["recoveries"]) > 0 || p["paused-because"] is not null)
            row("postcopy paused", $"{L(p["recoveries"])} recoveries, {D(p["paused-ms"])} ms paused; last: {p["paused-because"]}");
    }
}
