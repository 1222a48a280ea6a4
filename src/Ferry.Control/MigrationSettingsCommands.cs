using System.Text.Json.Nodes;
using Ferry.Migration.Engine;

namespace Ferry.Control;

/// <summary>
/// migrate-set-parameters / query-migrate-parameters and migrate-set-capabilities / query-migrate-capabilities.
/// Names, types, ranges and order all come from <see cref="MigrationParameterTable"/> and
/// <see cref="MigrationCapabilityTable"/>; this class only turns JSON into the typed records and back.
/// </summary>
public sealed class MigrationSettingsCommands
{
    private readonly object _gate;
    private readonly Func<PrecopyMigration?> _running;
    private MigrationParameters _parameters = new();
    private MigrationCapabilities _capabilities = new();

    /// <param name="gate">The lock that also guards starting a migration (so capabilities cannot change under one).</param>
    /// <param name="running">The migration in progress, if any; called under <paramref name="gate"/>.</param>
    public MigrationSettingsCommands(object gate, Func<PrecopyMigration?> running)
    {
        _gate = gate;
        _running = running;
    }

    public MigrationParameters Parameters
    {
        get
        {
            lock (_gate)
                return _parameters;
        }
    }

    public MigrationCapabilities Capabilities
    {
        get
        {
            lock (_gate)
                return _capabilities;
        }
    }

    public void Register(QmpServer server)
    {
        server.Register("migrate-set-parameters", SetParameters);
        server.Register("query-migrate-parameters", _ => QueryParameters());
        server.Register("migrate-set-capabilities", SetCapabilities);
        server.Register("query-migrate-capabilities", _ => QueryCapabilities());
    }

    private JsonNode? SetParameters(JsonObject? args)
    {
        if (args is null)
            return null;
        var p = Parameters;
        foreach (var (name, value) in args)
        {
            var parameter = MigrationParameterTable.Find(name)
                ?? throw new QmpException(QmpException.GenericError, $"Parameter '{name}' is unexpected (known: {MigrationParameterTable.Names})");
            var number = value is JsonValue n && n.TryGetValue<long>(out var x) ? x
                : throw new QmpException(QmpException.GenericError, $"Parameter '{name}' expects an integer, not {value?.ToJsonString() ?? "null"}");
            if (parameter.Check(number) is { } error)
                throw new QmpException(QmpException.GenericError, $"Parameter {error}");
            p = parameter.Set(p, number);
        }
        lock (_gate)
        {
            _parameters = p;
            // Like QEMU, a new bandwidth limit applies to a running migration at once; the others apply to the next.
            _running()?.SetMaxBandwidth(p.MaxBandwidth);
        }
        return null;
    }

    private JsonObject QueryParameters()
    {
        var p = Parameters;
        var result = new JsonObject();
        foreach (var parameter in MigrationParameterTable.All)
            result[parameter.Name] = parameter.Get(p);
        return result;
    }

    private JsonNode? SetCapabilities(JsonObject? args)
    {
        if (args?["capabilities"] is not JsonArray list)
            throw new QmpException(QmpException.GenericError, "Parameter 'capabilities' is missing or not a list");
        lock (_gate)
        {
            if (_running() is not null)
                throw new QmpException(QmpException.GenericError, "There's a migration process in progress");
            var c = _capabilities;
            foreach (var item in list)
            {
                var name = item?["capability"] is JsonValue nv && nv.TryGetValue<string>(out var s) ? s
                    : throw new QmpException(QmpException.GenericError, "each capability needs a 'capability' name");
                var state = item["state"] is JsonValue sv && sv.TryGetValue<bool>(out var b) ? b
                    : throw new QmpException(QmpException.GenericError, $"capability '{name}' needs a boolean 'state'");
                var capability = MigrationCapabilityTable.Find(name)
                    ?? throw new QmpException(QmpException.GenericError, $"Capability '{name}' is not supported (known: {MigrationCapabilityTable.Names})");
                c = capability.Set(c, state);
            }
            _capabilities = c;
        }
        return null;
    }

    private JsonArray QueryCapabilities()
    {
        var c = Capabilities;
        var result = new JsonArray();
        foreach (var capability in MigrationCapabilityTable.All)
            result.Add((JsonNode)new JsonObject { ["capability"] = capability.Name, ["state"] = capability.Get(c) });
        return result;
    }
}
