using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace Ferry.Qemu;

/// <summary>QEMU's own figures for one migration (query-migrate on the source once it completed).</summary>
public sealed record QemuMigrationResult(
    string Status, long TotalTimeMs, long DowntimeMs, long SetupTimeMs, ulong TransferredBytes,
    ulong ZeroPages, ulong NormalPages, ulong NormalBytes, ulong DirtySyncCount, double Mbps, string QemuVersion);

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
    public static async Task<(QemuGuest Destination, QemuMigrationResult Result)> MigrateAsync(QemuGuest source, QemuOptions options, long downtimeLimitMs = 300)
    {
        var port = FreePort();
        var destination = QemuGuest.Start(options with { Incoming = $"tcp:127.0.0.1:{port}" });
        try
        {
            _ = destination.Qmp; // wait until the destination listens
            source.Qmp.Execute("migrate-set-parameters", new JsonObject
            {
                ["max-bandwidth"] = long.MaxValue / 2,
                ["downtime-limit"] = downtimeLimitMs,
            });
            source.Qmp.Execute("migrate", new JsonObject { ["uri"] = $"tcp:127.0.0.1:{port}" });
            var deadline = DateTime.UtcNow + QemuGuest.Timeout;
            JsonNode info;
            while (true)
            {
                info = source.Qmp.Execute("query-migrate")!;
                var status = info["status"]?.GetValue<string>() ?? "none";
                if (status is "completed" or "failed" or "cancelled")
                    break;
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
