using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace Ferry.Qemu;

/// <summary>
/// QEMU's own figures for one migration (query-migrate on the source once it completed). With postcopy also
/// `ram.postcopy-requests` (source) and, where the destination reports them, `postcopy-blocktime` (ms) and
/// `postcopy-latency` (QEMU 10.1's average fault latency, as QEMU reports it: its unit changed while the series was
/// reviewed, so it is printed raw); -1 where not reported.
/// </summary>
public sealed record QemuMigrationResult(
    string Status, long TotalTimeMs, long DowntimeMs, long SetupTimeMs, ulong TransferredBytes,
    ulong ZeroPages, ulong NormalPages, ulong NormalBytes, ulong DirtySyncCount, double Mbps, string QemuVersion,
    bool Postcopy = false, ulong PostcopyRequests = 0, long PostcopyBlocktimeMs = -1, long PostcopyLatencyRaw = -1);

/// <summary>
/// How to migrate: <see cref="MaxBandwidth"/> bytes/s (null: QEMU's maximum); <see cref="PostcopyAfterSyncs"/>:
/// enable postcopy-ram on both sides (and postcopy-blocktime on the destination) and issue migrate-start-postcopy
/// once the source has synced its dirty log that many times (QEMU has no automatic switch).
/// </summary>
public sealed record QemuMigrationSettings(long? MaxBandwidth = null, int? PostcopyAfterSyncs = null);

/// <summary>Migrates a running QEMU guest to a fresh QEMU destination on loopback.</summary>
public static class QemuMigration
{
    public static int FreePort()
    {
        using var l = new TcpListener(IPAddress.Loopback, 0);
        l.Start();
        return ((IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>
    /// Starts a destination with the same options, migrates <paramref name="source"/> to it (max-bandwidth at its
    /// maximum, the given downtime limit) and returns the destination (the guest now runs there) and QEMU's figures.
    /// </summary>
    public static async Task<(QemuGuest Destination, QemuMigrationResult Result)> MigrateAsync(QemuGuest source, QemuOptions options, long downtimeLimitMs = 300, QemuMigrationSettings? settings = null)
    {
        settings ??= new QemuMigrationSettings();
        var postcopy = settings.PostcopyAfterSyncs is not null;
        var port = FreePort();
        var destination = QemuGuest.Start(options with { Incoming = $"tcp:127.0.0.1:{port}" });
        try
        {
            _ = destination.Qmp; // wait until the destination listens
            if (postcopy)
            {
                static JsonObject Capabilities(params string[] names) => new()
                {
                    ["capabilities"] = new JsonArray([.. names.Select(n => (JsonNode)new JsonObject { ["capability"] = n, ["state"] = true })]),
                };
                destination.Qmp.Execute("migrate-set-capabilities", Capabilities("postcopy-ram", "postcopy-blocktime"));
                source.Qmp.Execute("migrate-set-capabilities", Capabilities("postcopy-ram"));
            }
            if (options.TlsCredentials is not null)
            {
                // Both sides name their tls-creds object; the source checks the destination's certificate for localhost.
                destination.Qmp.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = "ferry-tls" });
                source.Qmp.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = "ferry-tls", ["tls-hostname"] = "localhost" });
            }
            source.Qmp.Execute("migrate-set-parameters", new JsonObject
            {
                ["max-bandwidth"] = settings.MaxBandwidth ?? long.MaxValue / 2,
                ["downtime-limit"] = downtimeLimitMs,
            });
            source.Qmp.Execute("migrate", new JsonObject { ["uri"] = $"tcp:127.0.0.1:{port}" });
            var deadline = DateTime.UtcNow + QemuGuest.Timeout;
            JsonNode info;
            var switched = false;
            while (true)
            {
                info = source.Qmp.Execute("query-migrate")!;
                var status = info["status"]?.GetValue<string>() ?? "none";
                if (status is "completed" or "failed" or "cancelled")
                    break;
                if (postcopy && !switched && status == "active" && (info["ram"]?["dirty-sync-count"]?.GetValue<ulong>() ?? 0) >= (ulong)settings.PostcopyAfterSyncs!.Value)
                {
                    source.Qmp.Execute("migrate-start-postcopy");
                    switched = true;
                }
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException($"QEMU migration still '{status}' after {QemuGuest.Timeout.TotalSeconds} s");
                await Task.Delay(10).ConfigureAwait(false);
            }
            var ram = info["ram"];
            ulong U(string name) => ram?[name]?.GetValue<ulong>() ?? 0;
            var result = new QemuMigrationResult(
                info["status"]!.GetValue<string>(),
                info["total-time"]?.GetValue<long>() ?? -1,
                info["downtime"]?.GetValue<long>() ?? -1,
                info["setup-time"]?.GetValue<long>() ?? -1,
                U("transferred"), U("duplicate"), U("normal"), U("normal-bytes"), U("dirty-sync-count"),
                ram?["mbps"]?.GetValue<double>() ?? 0, QemuGuest.Version());
            if (postcopy)
            {
                // The destination's own view of the postcopy phase (blocktime needs its capability, set above).
                var incoming = destination.Qmp.Execute("query-migrate");
                result = result with
                {
                    Postcopy = switched,
                    PostcopyRequests = U("postcopy-requests"),
                    PostcopyBlocktimeMs = incoming?["postcopy-blocktime"]?.GetValue<long>() ?? -1,
                    PostcopyLatencyRaw = incoming?["postcopy-latency"]?.GetValue<long>() ?? -1,
                };
            }
            if (result.Status != "completed")
                throw new InvalidOperationException($"QEMU migration {result.Status}: {info.ToJsonString()}");
            // The destination resumes on its own after an incoming migration completes; wait until it runs.
            deadline = DateTime.UtcNow + QemuGuest.Timeout;
            while (destination.Qmp.Execute("query-status")!["status"]!.GetValue<string>() != "running")
            {
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException("the QEMU destination did not resume");
                await Task.Delay(10).ConfigureAwait(false);
            }
            return (destination, result);
        }
        catch
        {
            destination.Dispose();
            throw;
        }
    }
}
