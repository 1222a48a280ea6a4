using Ferry.Migration.Engine;
using System.Diagnostics;
using System.Text.Json.Nodes;
using Ferry.Control;
using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>
/// `ferry migrate` against a scripted QMP server (no KVM): the progress lines name the pass the final table
/// numbers, percentages stay within the pass, and Ctrl-C cancels the migration and says so.
/// </summary>
#pragma warning disable CA1001 // the server is disposed in IAsyncLifetime.DisposeAsync
public sealed class MigrateProgressTests : IAsyncLifetime
#pragma warning restore CA1001
{
    private const long PageSize = 4096;
    private readonly string _socket = Path.Combine(Path.GetTempPath(), $"ferry-fake-{Guid.NewGuid():N}.sock");
    private readonly QmpServer _server;
    private readonly Lock _lock = new();
    private int _queries;
    private bool _cancelRequested;
    private bool _endless;

    public MigrateProgressTests()
    {
        _server = new QmpServer(_socket);
        _server.DeclareEvent("MIGRATION");
        _server.DeclareEvent("MIGRATION_PASS");
        // What `ferry migrate` sends: any parameter or capability (optional members), the URI; replies are empty.
        var parameters = new QmpObjectType("fake-parameters", [.. MigrationParameterTable.All.Select(p => new QmpMember(p.Name, QmpType.Any, Optional: true))]);
        _server.Register("migrate-set-parameters", parameters, QmpObjectType.Empty, _ => null);
        _server.Register("migrate-set-capabilities", new QmpObjectType("fake-capabilities", [new QmpMember("capabilities", QmpType.Any)]), QmpObjectType.Empty, _ => null);
        _server.Register("migrate", new QmpObjectType("fake-migrate", [new QmpMember("uri", QmpType.Str), new QmpMember("detach", QmpType.Any, Optional: true)]), QmpObjectType.Empty, _ => null);
        _server.Register("migrate_cancel", QmpObjectType.Empty, () =>
        {
            lock (_lock)
                _cancelRequested = true;
            return null;
        });
        _server.Register("query-migrate", QmpType.Any, () => Query());
    }

    public Task InitializeAsync()
    {
        _server.Start();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    private static JsonObject State(string status, long normal, long syncs, long remainingPages) => new()
    {
        ["status"] = status,
        ["ram"] = new JsonObject
        {
            ["transferred"] = normal * PageSize, ["remaining"] = remainingPages * PageSize, ["total"] = 1024 * PageSize,
            ["duplicate"] = 0, ["normal"] = normal, ["dirty-sync-count"] = syncs, ["mbps"] = 100.0,
        },
        ["ferry"] = new JsonObject { ["skipped-untouched"] = 24, ["skipped-ballooned"] = 0, ["skipped-hinted"] = 0 },
    };

    private static JsonObject Final(string status, long passes)
    {
        var final = State(status, 1400, passes, 0);
        var list = new JsonArray();
        for (var p = 1; p <= passes; p++)
            list.Add((JsonNode)new JsonObject { ["pass"] = p, ["duration-ms"] = 100.0, ["bytes"] = 1000 * PageSize, ["normal"] = 100, ["duplicate"] = 0 });
        final["setup-time"] = 1;
        var ferry = final["ferry"]!.AsObject();
        ferry["channels"] = 1;
        ferry["passes"] = list;
        ferry["total-time-exact-ms"] = 1500.0;
        if (status == "cancelled")
        {
            final["error-desc"] = "migration cancelled";
            final["ferry-error-kind"] = "cancelled";
        }
        return final;
    }

    /// <summary>Pass 1 (1000 pages) over 15 polls, pass 2 (300 pages) over 15, then the switch-over and the end.</summary>
    private JsonObject Query()
    {
        lock (_lock)
        {
            var n = ++_queries;
            if (_cancelRequested)
            {
                _server.Emit("MIGRATION", new JsonObject { ["status"] = "cancelled", ["ferry-info"] = Final("cancelled", 1) });
                return State("cancelled", 0, 1, 0);
            }
            if (_endless || n <= 15)
                return State("active", Math.Min(1000, (_endless ? n % 15 : n) * 70), 0, 0);
            if (n == 16)
                _server.Emit("MIGRATION_PASS", new JsonObject { ["pass"] = 1 });
            if (n <= 30)
                return State("active", 1000 + (n - 15) * 20, 1, 300);
            if (n == 31)
            {
                _server.Emit("MIGRATION_PASS", new JsonObject { ["pass"] = 2 });
                _server.Emit("MIGRATION", new JsonObject { ["status"] = "device" });
                return State("device", 1300, 3, 300);
            }
            _server.Emit("MIGRATION", new JsonObject { ["status"] = "completed", ["ferry-info"] = Final("completed", 3) });
            return State("completed", 1400, 3, 0);
        }
    }

    [Fact]
    public void Plain_progress_names_the_pass_the_table_counts()
    {
        var report = Path.Combine(Path.GetTempPath(), $"ferry-fake-{Guid.NewGuid():N}.json");
        try
        {
            var (code, stdout, stderr) = CliTests.Ferry("", null, "migrate", $"unix:{_socket}", "tcp:h:1", "--report", report);
            Assert.True(code == 0, $"exit {code}: {stderr}");
            var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Contains(lines, l => l.Contains("active pass 1:", StringComparison.Ordinal));
            Assert.Contains(lines, l => l.Contains("active pass 2:", StringComparison.Ordinal));
            Assert.DoesNotContain(lines, l => l.Contains("pass 4", StringComparison.Ordinal));
            foreach (var line in lines.Where(l => l.Contains('%', StringComparison.Ordinal)))
            {
                var percent = double.Parse(line.Split(':')[2].Trim().Split('%')[0], System.Globalization.CultureInfo.InvariantCulture);
                Assert.InRange(percent, 0, 100);
            }
            // Pass 1 starts empty: its first line is not already full (the bar used to be).
            var first = lines.First(l => l.Contains("pass 1:", StringComparison.Ordinal));
            Assert.DoesNotContain("100.0%", first, StringComparison.Ordinal);
            Assert.Contains("passes               3", stdout, StringComparison.Ordinal);
            Assert.Equal(3, JsonNode.Parse(File.ReadAllText(report))!["ferry"]!["passes"]!.AsArray().Count);
        }
        finally
        {
            File.Delete(report);
        }
    }

    [Fact]
    public async Task Ctrl_C_cancels_the_migration_and_says_so()
    {
        lock (_lock)
            _endless = true;
        var psi = new ProcessStartInfo("dotnet", [typeof(Program).Assembly.Location, "migrate", $"unix:{_socket}", "tcp:h:1"])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using var ferry = Process.Start(psi)!;
        var stdout = ferry.StandardOutput.ReadToEndAsync();
        var stderr = ferry.StandardError.ReadToEndAsync();
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (Volatile.Read(ref _queries) < 3 && DateTime.UtcNow < deadline)
                await Task.Delay(50);
            Assert.True(Volatile.Read(ref _queries) >= 3, "ferry migrate never polled");
            using (var kill = Process.Start("kill", ["-INT", $"{ferry.Id}"]))
                await kill.WaitForExitAsync();
            Assert.True(ferry.WaitForExit(30_000), "ferry migrate did not end after Ctrl-C");
            Assert.Equal((int)ExitCode.Cancelled, ferry.ExitCode);
            lock (_lock)
                Assert.True(_cancelRequested, "migrate_cancel was not sent");
            Assert.Contains("Ctrl-C: migration cancelled; the VM runs on", await stderr, StringComparison.Ordinal);
            Assert.Contains("status               cancelled", await stdout, StringComparison.Ordinal);
        }
        finally
        {
            if (!ferry.HasExited)
                ferry.Kill(entireProcessTree: true);
        }
    }
}
