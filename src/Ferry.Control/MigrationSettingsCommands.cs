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

    /// <summary>Changes the parameters from the command line before QMP serves anyone (`ferry run --tls-creds`); throws <see cref="ArgumentException"/> naming a bad value.</summary>
    public void Update(Func<MigrationParameters, MigrationParameters> change)
    {
        ArgumentNullException.ThrowIfNull(change);
        lock (_gate)
        {
            var next = change(_parameters);
            next.Validate();
            _parameters = next;
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

    /// <summary>migrate-set-parameters' arguments and query-migrate-parameters' result: every parameter, optional (numbers are ints, the TLS settings strings).</summary>
    private static readonly QmpObjectType ParametersType = new("MigrateSetParameters",
    [
        .. MigrationParameterTable.All.Select(p => new QmpMember(p.Name, QmpType.Int, Optional: true)),
        .. MigrationParameterTable.Texts.Select(p => new QmpMember(p.Name, QmpType.Str, Optional: true)),
    ]);

    private static readonly QmpObjectType CapabilityStatus = new("MigrationCapabilityStatus",
    [
        new("capability", new QmpEnumType("MigrationCapability", [.. MigrationCapabilityTable.All.Select(c => c.Name)])),
        new("state", QmpType.Bool),
    ]);

    private static readonly QmpArrayType CapabilityList = new(CapabilityStatus);

    public void Register(QmpServer server)
    {
        server.Register("migrate-set-parameters", ParametersType, QmpObjectType.Empty, SetParameters);
        server.Register("query-migrate-parameters", ParametersType, QueryParameters);
        server.Register("migrate-set-capabilities", new QmpObjectType("q_obj_migrate-set-capabilities-arg", [new("capabilities", CapabilityList)]),
            QmpObjectType.Empty, SetCapabilities);
        server.Register("query-migrate-capabilities", CapabilityList, QueryCapabilities);
    }

    /// <summary>Names, types and presence were checked against <see cref="ParametersType"/>; ranges are checked here, all before any is applied.</summary>
    private JsonNode? SetParameters(JsonObject args)
    {
        var p = Parameters;
        foreach (var (name, value) in args)
        {
            if (MigrationParameterTable.FindText(name) is { } text)
            {
                var textValue = value!.GetValue<string>();
                if (text.Check(textValue) is { } textError)
                    throw new QmpException(QmpException.GenericError, $"Parameter {textError}");
                p = text.Set(p, textValue);
                continue;
            }
            var parameter = MigrationParameterTable.Find(name)!;
            var number = value!.GetValue<long>();
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
        foreach (var parameter in MigrationParameterTable.Texts)
            result[parameter.Name] = parameter.Get(p);
        return result;
    }

    /// <summary>Shapes and capability names were checked against the declared type.</summary>
    private JsonNode? SetCapabilities(JsonObject args)
    {
        var list = (JsonArray)args["capabilities"]!;
        lock (_gate)
        {
            if (_running() is not null)
                throw new QmpException(QmpException.GenericError, "There's a migration process in progress");
            var c = _capabilities;
            foreach (var item in list)
                c = MigrationCapabilityTable.Find(item!["capability"]!.GetValue<string>())!.Set(c, item["state"]!.GetValue<bool>());
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
