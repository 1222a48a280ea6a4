using System.Reflection;
using System.Text.Json.Nodes;

namespace Ferry.Control;

/// <summary>
/// The commands about QMP itself, which every server has: qmp_capabilities, query-version, query-commands,
/// query-events and query-qmp-schema (introspection, from the declarations every command and event registered).
/// </summary>
internal static class QmpCoreCommands
{
    public const string Capabilities = "qmp_capabilities";

    /// <summary>
    /// The QEMU release whose QMP the commands Ferry implements follow (names, shapes, error texts), and whose
    /// client library the conformance test runs. Clients that gate features on the version see this; "package"
    /// says it is Ferry.
    /// </summary>
    private static readonly (int Major, int Minor, int Micro) QemuCompatible = (7, 2, 0);

    /// <summary>Ferry's version, from the assembly (Directory.Build.props sets it).</summary>
    public static string FerryVersion { get; } =
        typeof(QmpServer).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?.InformationalVersion ?? "unknown";

    private static readonly QmpEnumType CapabilityEnum = new("QMPCapability", ["oob"]);

    private static readonly QmpObjectType VersionTriple = new("VersionTriple", [new("major", QmpType.Int), new("minor", QmpType.Int), new("micro", QmpType.Int)]);
    private static readonly QmpObjectType VersionInfo = new("VersionInfo", [new("qemu", VersionTriple), new("package", QmpType.Str)]);
    private static readonly QmpObjectType NameInfo = new("CommandInfo", [new("name", QmpType.Str)]);
    private static readonly QmpObjectType EventInfo = new("EventInfo", [new("name", QmpType.Str)]);

    /// <summary>query-version's answer, also the greeting's "version".</summary>
    public static JsonObject Version() => new()
    {
        ["qemu"] = new JsonObject { ["micro"] = QemuCompatible.Micro, ["minor"] = QemuCompatible.Minor, ["major"] = QemuCompatible.Major },
        ["package"] = $"Ferry {FerryVersion}",
    };

    public static void Register(QmpServer server)
    {
        server.Register(Capabilities, new QmpObjectType("q_obj_qmp_capabilities-arg", [new("enable", new QmpArrayType(CapabilityEnum), Optional: true)]), QmpObjectType.Empty, args =>
        {
            // The greeting offers no capability, so asking for one is refused as QEMU refuses one it did not offer.
            if (args["enable"] is JsonArray { Count: > 0 } enable)
                throw new QmpException(QmpException.GenericError, $"Capability '{enable[0]!.GetValue<string>()}' not available");
            return null;
        });
        server.Register("query-version", VersionInfo, Version);
        server.Register("query-commands", new QmpArrayType(NameInfo), () =>
            new JsonArray([.. server.Commands.Select(c => (JsonNode)new JsonObject { ["name"] = c.Name })]));
        server.Register("query-events", new QmpArrayType(EventInfo), () =>
            new JsonArray([.. server.Events.Select(e => (JsonNode)new JsonObject { ["name"] = e.Key })]));
        server.Register("query-qmp-schema", new QmpArrayType(QmpType.Any), () => Schema(server));
    }

    /// <summary>QEMU's SchemaInfo list: one entry per command and event, then every type they name.</summary>
    private static JsonArray Schema(QmpServer server)
    {
        var entries = new JsonArray();
        var types = new Dictionary<string, QmpType>(StringComparer.Ordinal);
        void Collect(QmpType type)
        {
            if (!types.TryAdd(type.Name, type))
                return;
            foreach (var t in type.Referenced)
                Collect(t);
        }
        foreach (var c in server.Commands)
        {
            entries.Add((JsonNode)new JsonObject { ["name"] = c.Name, ["meta-type"] = "command", ["arg-type"] = c.Arguments.Name, ["ret-type"] = c.Returns.Name, ["allow-oob"] = false });
            Collect(c.Arguments);
            Collect(c.Returns);
        }
        foreach (var (name, data) in server.Events)
        {
            entries.Add((JsonNode)new JsonObject { ["name"] = name, ["meta-type"] = "event", ["arg-type"] = data.Name });
            Collect(data);
        }
        foreach (var type in types.Values.OrderBy(t => t.Name, StringComparer.Ordinal))
            entries.Add((JsonNode)type.ToSchemaInfo());
        return entries;
    }
}
