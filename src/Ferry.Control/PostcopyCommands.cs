using System.Text.Json.Nodes;
using Ferry.Migration.Engine;
using Ferry.Migration.Transport;

namespace Ferry.Control;

/// <summary>
/// Postcopy's QMP surface, with QEMU's names: migrate-start-postcopy and migrate with resume on the source,
/// migrate-recover on the destination, and the postcopy figures of query-migrate (QEMU's postcopy-requests,
/// postcopy-blocktime, postcopy-vcpu-blocktime; Ferry's under ferry.postcopy).
/// </summary>
public static class PostcopyCommands
{
    /// <summary>The source's command: migrate-start-postcopy switches the running migration at its next pass boundary.</summary>
    public static void Register(QmpServer server, Func<PrecopyMigration?> current)
    {
        ArgumentNullException.ThrowIfNull(server);
        server.Register("migrate-start-postcopy", QmpObjectType.Empty, () =>
        {
            var migration = current() ?? throw new QmpException(QmpException.GenericError, "No migration in progress");
            QmpException.Relay(migration.StartPostcopy);
            return null;
        });
    }

    /// <summary>
    /// migrate {"uri": ..., "resume": true}: reconnects a postcopy-paused migration to a destination that ran
    /// migrate-recover on that URI, under TLS when <paramref name="parameters"/> have tls-creds (as migrate).
    /// </summary>
    public static JsonNode? Resume(PrecopyMigration? current, MigrationUri uri, MigrationParameters parameters)
    {
        ArgumentNullException.ThrowIfNull(uri);
        var migration = current ?? throw new QmpException(QmpException.GenericError, "Parameter 'resume': no migration to resume (none is postcopy-paused)");
        if (MigrationTransports.CheckPostcopy(uri) is { } refused)
            throw new QmpException(QmpException.GenericError, $"Parameter 'uri': {refused}");
        IChannelConnector connector;
        try
        {
            connector = MigrationTransports.Connect(uri, parameters);
        }
        catch (MigrationTlsException e)
        {
            throw new QmpException(QmpException.GenericError, e.Message);
        }
        QmpException.Relay(() => migration.ResumePostcopy(connector));
        return null;
    }

    /// <summary>
    /// The destination's command: migrate-recover {"uri": "tcp:HOST:PORT" or "unix:PATH"} listens there for the
    /// source's reconnection of a postcopy-paused incoming migration (the source then runs migrate with resume).
    /// <paramref name="listen"/> makes the listener (the incoming path's: under TLS when tls-creds is set).
    /// </summary>
    public static void RegisterIncoming(QmpServer server, PostcopyIncoming incoming, Func<MigrationUri, IChannelListener> listen)
    {
        ArgumentNullException.ThrowIfNull(server);
        ArgumentNullException.ThrowIfNull(incoming);
        ArgumentNullException.ThrowIfNull(listen);
        server.Register("migrate-recover", new QmpObjectType("q_obj_migrate-recover-arg", [new("uri", QmpType.Str)]), QmpObjectType.Empty, args =>
        {
            MigrationUri uri;
            try
            {
                uri = MigrationUri.Parse(args["uri"]!.GetValue<string>());
            }
            catch (FormatException e)
            {
                throw new QmpException(QmpException.GenericError, e.Message);
            }
            if (MigrationTransports.CheckPostcopy(uri) is { } refused)
                throw new QmpException(QmpException.GenericError, $"Parameter 'uri': {refused}");
            if (incoming.Status != MigrationStatus.PostcopyPaused)
                throw new QmpException(QmpException.GenericError, $"Migrate recover can only be run when postcopy is paused (the incoming migration is {incoming.Status.ToQmp()})");
            IChannelListener listener;
            try
            {
                listener = listen(uri);
            }
            catch (IOException e)
            {
                throw new QmpException(QmpException.GenericError, $"Parameter 'uri': {e.Message}");
            }
            try
            {
                incoming.Recover(listener);
            }
            catch (InvalidOperationException e)
            {
                listener.Dispose();
                throw new QmpException(QmpException.GenericError, e.Message);
            }
            return null;
        });
    }

    /// <summary>query-migrate's postcopy fields: QEMU's where QEMU has them, the rest under ferry.postcopy.</summary>
    public static void AddStats(JsonObject result, JsonObject ferryInfo, PostcopyStats p)
    {
        ArgumentNullException.ThrowIfNull(result);
        ArgumentNullException.ThrowIfNull(ferryInfo);
        ArgumentNullException.ThrowIfNull(p);
        var ferry = new JsonObject
        {
            ["owed-pages"] = p.OwedPages,
            ["urgent-pages"] = p.UrgentPages,
            ["background-pages"] = p.BackgroundPages,
            ["requests-for-sent-pages"] = p.RequestsForSentPages,
            ["bytes"] = p.Bytes,
            ["recoveries"] = p.Recoveries,
            ["active-ms"] = Math.Round(p.ActiveMs, 3),
            ["paused-ms"] = Math.Round(p.PausedMs, 3),
        };
        // A source's query-migrate has QEMU's ram section; a destination's has none, so there the count is Ferry's.
        if (result["ram"] is JsonObject ram)
            ram["postcopy-requests"] = p.Requests;
        else
            ferry["requests"] = p.Requests;
        if (p.PausedBecause is not null)
            ferry["paused-because"] = p.PausedBecause;
        if (p.DestinationFigures)
        {
            // QEMU reports blocktime in ms as integers; the exact figures are in ferry.postcopy.
            result["postcopy-blocktime"] = (long)Math.Round(p.BlocktimeMs);
            result["postcopy-vcpu-blocktime"] = new JsonArray([.. p.VcpuBlocktimeMs.Select(ms => (JsonNode)(long)Math.Round(ms))]);
            ferry["faults"] = p.Faults;
            ferry["duplicate-pages"] = p.DuplicatePages;
            ferry["blocktime-ms"] = Math.Round(p.BlocktimeMs, 3);
            ferry["fault-latency-us"] = new JsonObject
            {
                ["p50"] = Math.Round(p.LatencyP50Us, 1),
                ["p99"] = Math.Round(p.LatencyP99Us, 1),
                ["max"] = Math.Round(p.LatencyMaxUs, 1),
            };
        }
        ferryInfo["postcopy"] = ferry;
    }
}
