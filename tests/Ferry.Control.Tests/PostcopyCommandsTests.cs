using System.Text.Json.Nodes;
using Ferry.Migration.Engine;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>Postcopy's QMP commands over a real QMP socket (no machine, no KVM), and its query-migrate fields.</summary>
public sealed class PostcopyCommandsTests : IAsyncLifetime, IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
    private readonly PostcopyIncoming _incoming = new();
    private readonly List<MigrationUri> _listened = [];
    private QmpServer _server = null!;
    private QmpClient _client = null!;

    public Task InitializeAsync()
    {
        _server = new QmpServer(_path);
        PostcopyCommands.Register(_server, () => null);
        PostcopyCommands.RegisterIncoming(_server, _incoming, uri =>
        {
            _listened.Add(uri);
            return new InMemoryChannels();
        });
        _server.Start();
        _client = QmpClient.Connect(_path);
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        _client.Dispose();
        await _server.DisposeAsync();
    }

    public void Dispose() => DisposeAsync().GetAwaiter().GetResult();

    private QmpException Refused(string command, JsonObject? arguments = null) => Assert.Throws<QmpException>(() => _client.Execute(command, arguments));

    [Fact]
    public void Start_postcopy_without_a_migration_is_refused()
    {
        Assert.Equal("No migration in progress", Refused("migrate-start-postcopy").Message);
    }

    [Fact]
    public void Recover_is_refused_unless_postcopy_is_paused_and_checks_its_uri()
    {
        Assert.Equal("Migrate recover can only be run when postcopy is paused (the incoming migration is none)",
            Refused("migrate-recover", new JsonObject { ["uri"] = "tcp:127.0.0.1:4444" }).Message);
        Assert.StartsWith("Parameter 'uri': Postcopy requires multi-channel URIs (e.g. tcp or unix): exec:cat carries one channel",
            Refused("migrate-recover", new JsonObject { ["uri"] = "exec:cat" }).Message, StringComparison.Ordinal);
        Assert.Contains("'ftp:x'", Refused("migrate-recover", new JsonObject { ["uri"] = "ftp:x" }).Message, StringComparison.Ordinal);
        Assert.Equal("Parameter 'uri' is missing", Refused("migrate-recover", []).Message);
        Assert.Empty(_listened);
    }

    [Fact]
    public void Resume_without_a_paused_migration_is_refused() =>
        Assert.Contains("no migration to resume", Assert.Throws<QmpException>(() => PostcopyCommands.Resume(null, MigrationUri.Parse("tcp:127.0.0.1:1"), new MigrationParameters())).Message, StringComparison.Ordinal);

    [Fact]
    public void Query_migrate_shows_qemus_postcopy_fields_and_ferrys()
    {
        var stats = new MigrationStats
        {
            Status = MigrationStatus.Completed,
            Postcopy = new PostcopyStats
            {
                OwedPages = 100, Requests = 7, UrgentPages = 6, BackgroundPages = 94, Recoveries = 1, PausedBecause = "a channel broke",
                DestinationFigures = true, Faults = 9, BlocktimeMs = 12.4, VcpuBlocktimeMs = [20.2, 30.6], LatencyP50Us = 150, LatencyP99Us = 900, LatencyMaxUs = 1200,
            },
        };

        var json = MigrationJson.ToQmp(stats, passes: false);

        Assert.Equal(7, json["ram"]!["postcopy-requests"]!.GetValue<long>());
        Assert.Equal(12, json["postcopy-blocktime"]!.GetValue<long>());
        Assert.Equal([20L, 31L], json["postcopy-vcpu-blocktime"]!.AsArray().Select(n => n!.GetValue<long>()));
        var postcopy = json["ferry"]!["postcopy"]!;
        Assert.Equal(100, postcopy["owed-pages"]!.GetValue<long>());
        Assert.Equal(6, postcopy["urgent-pages"]!.GetValue<long>());
        Assert.Equal(1, postcopy["recoveries"]!.GetValue<int>());
        Assert.Equal("a channel broke", postcopy["paused-because"]!.GetValue<string>());
        Assert.Equal(150.0, postcopy["fault-latency-us"]!["p50"]!.GetValue<double>());
        Assert.Equal(900.0, postcopy["fault-latency-us"]!["p99"]!.GetValue<double>());
        Assert.Equal("completed", json["status"]!.GetValue<string>());
    }

    [Fact]
    public void A_precopy_migration_has_no_postcopy_fields()
    {
        var json = MigrationJson.ToQmp(new MigrationStats { Status = MigrationStatus.Completed }, passes: false);
        Assert.Null(json["postcopy-blocktime"]);
        Assert.Null(json["ram"]!["postcopy-requests"]);
        Assert.Null(json["ferry"]!["postcopy"]);
    }
}
