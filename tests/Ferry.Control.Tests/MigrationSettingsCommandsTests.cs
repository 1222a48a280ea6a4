using System.Text.Json.Nodes;
using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>
/// migrate-set-parameters / query-migrate-parameters / migrate-set-capabilities / query-migrate-capabilities over a
/// real QMP socket, driven by the tables. No machine and no KVM needed.
/// </summary>
public sealed class MigrationSettingsCommandsTests : IAsyncLifetime, IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
    private readonly MigrationSettingsCommands _settings = new(new object(), () => null);
    private QmpServer _server = null!;
    private QmpClient _client = null!;

    public Task InitializeAsync()
    {
        _server = new QmpServer(_path);
        _settings.Register(_server);
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

    private QmpException Refused(string command, JsonObject arguments) => Assert.Throws<QmpException>(() => _client.Execute(command, arguments));

    [Fact]
    public void Query_lists_todays_parameters_in_todays_order()
    {
        var result = (JsonObject)_client.Execute("query-migrate-parameters")!;
        Assert.Equal(
            ["max-bandwidth", "downtime-limit", "multifd-channels", "cpu-throttle-initial", "cpu-throttle-increment", "max-cpu-throttle", "throttle-trigger-threshold", "ferry-hint-budget-ms", "ferry-switchover-timeout-ms", "ferry-channel-timeout-ms", "ferry-postcopy-after-passes", "tls-creds", "tls-hostname", "tls-authz"],
            result.Select(kv => kv.Key));
        foreach (var parameter in MigrationParameterTable.All)
            Assert.Equal(parameter.Default, result[parameter.Name]!.GetValue<long>());
        foreach (var parameter in MigrationParameterTable.Texts)
            Assert.Equal("", result[parameter.Name]!.GetValue<string>());
    }

    [Fact]
    public void The_tls_settings_are_strings_that_round_trip_and_are_checked()
    {
        _client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = "/etc/ferry/tls", ["tls-hostname"] = "dest.example", ["tls-authz"] = "CN=a,O=X; CN=b,O=X" });
        var result = (JsonObject)_client.Execute("query-migrate-parameters")!;
        Assert.Equal("/etc/ferry/tls", result["tls-creds"]!.GetValue<string>());
        Assert.Equal("dest.example", result["tls-hostname"]!.GetValue<string>());
        Assert.Equal(["CN=a,O=X", "CN=b,O=X"], _settings.Parameters.AllowedClientSubjects);
        Assert.Equal("Invalid parameter type for 'tls-creds', expected: string", Refused("migrate-set-parameters", new JsonObject { ["tls-creds"] = 1 }).Message);
        Assert.Equal("Parameter tls-hostname 'a b' contains a control character", Refused("migrate-set-parameters", new JsonObject { ["tls-hostname"] = "a\nb" }).Message);
        // Empty turns TLS off again, as in QEMU.
        _client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = "" });
        Assert.Equal("", _settings.Parameters.TlsCreds);
    }

    [Fact]
    public void Every_parameter_round_trips_through_set_and_query()
    {
        var wanted = new JsonObject();
        foreach (var parameter in MigrationParameterTable.All)
            wanted[parameter.Name] = parameter.Default == parameter.Max ? parameter.Min : parameter.Max;
        _client.Execute("migrate-set-parameters", (JsonObject)wanted.DeepClone());
        var result = (JsonObject)_client.Execute("query-migrate-parameters")!;
        foreach (var parameter in MigrationParameterTable.All)
        {
            Assert.Equal(wanted[parameter.Name]!.GetValue<long>(), result[parameter.Name]!.GetValue<long>());
            Assert.Equal(wanted[parameter.Name]!.GetValue<long>(), parameter.Get(_settings.Parameters));
        }
    }

    [Fact]
    public void Out_of_range_values_are_refused_naming_the_value_and_nothing_changes()
    {
        foreach (var parameter in MigrationParameterTable.All)
        {
            foreach (var bad in new[] { parameter.Min - 1, parameter.Max == long.MaxValue ? parameter.Min - 2 : parameter.Max + 1 })
            {
                var e = Refused("migrate-set-parameters", new JsonObject { [parameter.Name] = bad });
                Assert.Equal(QmpException.GenericError, e.Class);
                Assert.Equal($"Parameter {parameter.Check(bad)}", e.Message);
                Assert.Contains($"{parameter.Name} {bad} ", e.Message, StringComparison.Ordinal);
            }
        }
        // A value far outside int range is named as given, not clamped.
        Assert.Equal("Parameter multifd-channels 10000000000 is outside 1..64", Refused("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 10_000_000_000L }).Message);
        Assert.Equal(new MigrationParameters(), _settings.Parameters);
    }

    [Fact]
    public void A_bad_request_changes_no_parameter_even_when_earlier_ones_were_good()
    {
        Refused("migrate-set-parameters", new JsonObject { ["downtime-limit"] = 50, ["max-cpu-throttle"] = 0 });
        Assert.Equal(new MigrationParameters(), _settings.Parameters);
    }

    [Fact]
    public void Unknown_names_and_wrong_types_are_named()
    {
        var e = Refused("migrate-set-parameters", new JsonObject { ["no-such-knob"] = 1 });
        Assert.Equal("Parameter 'no-such-knob' is unexpected", e.Message);
        foreach (var value in new JsonNode?[] { "300", 1.5, true, null, new JsonArray() })
        {
            e = Refused("migrate-set-parameters", new JsonObject { ["downtime-limit"] = value?.DeepClone() });
            Assert.Equal("Invalid parameter type for 'downtime-limit', expected: integer", e.Message);
        }
    }

    [Fact]
    public void Every_capability_round_trips_through_set_and_query()
    {
        var query = (JsonArray)_client.Execute("query-migrate-capabilities")!;
        Assert.Equal(["multifd", "auto-converge", "ferry-free-page-hint", "ferry-balloon-skip", "ferry-verify", "events", "mapped-ram", "postcopy-ram"], query.Select(c => c!["capability"]!.GetValue<string>()));
        Assert.Equal(MigrationCapabilityTable.All.Select(c => c.Default), query.Select(c => c!["state"]!.GetValue<bool>()));

        var flipped = new JsonArray();
        foreach (var capability in MigrationCapabilityTable.All)
            flipped.Add((JsonNode)new JsonObject { ["capability"] = capability.Name, ["state"] = !capability.Default });
        _client.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = flipped });
        query = (JsonArray)_client.Execute("query-migrate-capabilities")!;
        Assert.Equal(MigrationCapabilityTable.All.Select(c => !c.Default), query.Select(c => c!["state"]!.GetValue<bool>()));
        Assert.All(MigrationCapabilityTable.All, c => Assert.Equal(!c.Default, c.Get(_settings.Capabilities)));
    }

    [Fact]
    public void Bad_capabilities_are_named()
    {
        JsonObject One(JsonObject item) => new() { ["capabilities"] = new JsonArray(item) };
        // QEMU's texts (qobject-input-visitor), naming the member by its path.
        Assert.Equal("Parameter 'capabilities[0].capability' does not accept value 'x-colo'",
            Refused("migrate-set-capabilities", One(new JsonObject { ["capability"] = "x-colo", ["state"] = true })).Message);
        Assert.Equal("Invalid parameter type for 'capabilities[0].state', expected: boolean",
            Refused("migrate-set-capabilities", One(new JsonObject { ["capability"] = "multifd", ["state"] = "on" })).Message);
        Assert.Equal("Invalid parameter type for 'capabilities[0].capability', expected: string",
            Refused("migrate-set-capabilities", One(new JsonObject { ["capability"] = 7, ["state"] = true })).Message);
        Assert.Equal("Parameter 'capabilities[0].state' is missing",
            Refused("migrate-set-capabilities", One(new JsonObject { ["capability"] = "multifd" })).Message);
        Assert.Equal("Parameter 'capabilities[0].extra' is unexpected",
            Refused("migrate-set-capabilities", One(new JsonObject { ["capability"] = "multifd", ["state"] = true, ["extra"] = 1 })).Message);
        Assert.Equal("Parameter 'capabilities' is missing", Refused("migrate-set-capabilities", []).Message);
        Assert.Equal("Invalid parameter type for 'capabilities', expected: array", Refused("migrate-set-capabilities", new JsonObject { ["capabilities"] = 1 }).Message);
        Assert.Equal(new MigrationCapabilities(), _settings.Capabilities);
    }
}
