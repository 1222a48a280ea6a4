using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;

namespace Ferry.Control;

/// <summary>
/// human-monitor-command with the HMP subset tools use over QMP: `info status`, `info migrate`, `info balloon`.
/// Like QEMU's HMP, each is text over a QMP query (query-status, query-migrate, query-balloon), so it knows nothing
/// the query does not say, and a query that fails prints QEMU's "Error: ..." line. Output lines end "\r\n", as
/// QEMU's monitor writes them; an unknown command gets QEMU's "unknown command: '...'" text (not a QMP error).
/// </summary>
internal static class HmpCommands
{
    private static readonly Dictionary<string, Func<QmpServer, string>> Info = new(StringComparer.Ordinal)
    {
        ["status"] = InfoStatus,
        ["migrate"] = InfoMigrate,
        ["balloon"] = InfoBalloon,
    };

    public static void Register(QmpServer server) =>
        server.Register("human-monitor-command", QmpArgumentsContext.Default.HumanMonitorCommandArguments, QmpType.Str,
            args => Run(server, args.CommandLine));

    private static string Run(QmpServer server, string commandLine)
    {
        var words = commandLine.Split([' ', '\t'], StringSplitOptions.RemoveEmptyEntries);
        if (words.Length == 0)
            return "";
        string text;
        if (words[0] == "info" && words.Length == 2 && Info.TryGetValue(words[1], out var info))
        {
            try
            {
                text = info(server);
            }
            catch (QmpException e)
            {
                text = $"Error: {e.Message}\n";
            }
        }
        else
        {
            // QEMU names the words it could not match: the command, or "info" and its argument.
            var unknown = words[0] == "info" && words.Length > 1 ? $"info {words[1]}" : words[0];
            text = $"unknown command: '{unknown}'\n";
        }
        return text.Replace("\n", "\r\n", StringComparison.Ordinal);
    }

    private static string InfoStatus(QmpServer server)
    {
        var s = server.Execute("query-status");
        var running = s["running"]?.GetValue<bool>() == true;
        var status = s["status"]?.GetValue<string>();
        // QEMU: "running", "paused", or "paused (state)" for any other stopped state.
        var detail = !running && status != "paused" ? $" ({status})" : "";
        return $"VM status: {(running ? "running" : "paused")}{detail}\n";
    }

    private static string InfoBalloon(QmpServer server) =>
        // QEMU prints the guest's size in MiB.
        string.Create(CultureInfo.InvariantCulture, $"balloon: actual={server.Execute("query-balloon")["actual"]!.GetValue<long>() >> 20}\n");

    /// <summary>QEMU 7.2's layout, line by line, for the fields query-migrate reports (none before a migration).</summary>
    private static string InfoMigrate(QmpServer server)
    {
        var m = server.Execute("query-migrate");
        var text = new StringBuilder();
        void Line(string line) => text.Append(line).Append('\n');
        long Long(JsonNode? node) => node?.GetValue<long>() ?? 0;
        var inv = CultureInfo.InvariantCulture;
        if (m["status"] is { } status)
        {
            var failed = status.GetValue<string>() == "failed" && m["error-desc"] is { } desc ? $" ({desc.GetValue<string>()})" : "";
            Line($"Migration status: {status.GetValue<string>()}{failed}");
            Line(string.Create(inv, $"total time: {Long(m["total-time"])} ms"));
            if (m["expected-downtime"] is { } expected)
                Line(string.Create(inv, $"expected downtime: {Long(expected)} ms"));
            if (m["downtime"] is { } downtime)
                Line(string.Create(inv, $"downtime: {Long(downtime)} ms"));
            if (m["setup-time"] is { } setup)
                Line(string.Create(inv, $"setup: {Long(setup)} ms"));
        }
        if (m["ram"] is JsonObject ram)
        {
            Line(string.Create(inv, $"transferred ram: {Long(ram["transferred"]) >> 10} kbytes"));
            Line(string.Create(inv, $"throughput: {ram["mbps"]?.GetValue<double>() ?? 0:F2} mbps"));
            Line(string.Create(inv, $"remaining ram: {Long(ram["remaining"]) >> 10} kbytes"));
            Line(string.Create(inv, $"total ram: {Long(ram["total"]) >> 10} kbytes"));
            Line(string.Create(inv, $"duplicate: {Long(ram["duplicate"])} pages"));
            Line(string.Create(inv, $"normal: {Long(ram["normal"])} pages"));
            Line(string.Create(inv, $"normal bytes: {Long(ram["normal-bytes"]) >> 10} kbytes"));
            Line(string.Create(inv, $"dirty sync count: {Long(ram["dirty-sync-count"])}"));
            Line(string.Create(inv, $"page size: {Long(ram["page-size"]) >> 10} kbytes"));
            if (Long(ram["dirty-pages-rate"]) != 0)
                Line(string.Create(inv, $"dirty pages rate: {Long(ram["dirty-pages-rate"])} pages"));
        }
        if (m["cpu-throttle-percentage"] is { } throttle)
            Line(string.Create(inv, $"cpu throttle percentage: {Long(throttle)}"));
        return text.ToString();
    }
}
