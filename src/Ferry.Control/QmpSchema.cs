using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;

namespace Ferry.Control;

/// <summary>
/// A QMP type, as query-qmp-schema describes it (QEMU's SchemaInfo) and as a request's arguments are checked
/// against it. A command declares its arguments once, as one of these (usually built from a typed record, see
/// <see cref="QmpObjectType.From{T}"/>); the same declaration checks every request and is what introspection shows.
/// Errors use QEMU's wording (qobject-input-visitor), naming a nested member as QEMU does: "a.b", "list[0].c".
/// </summary>
public abstract class QmpType(string name)
{
    /// <summary>The type's name in the schema (QEMU's unmasked names: "int", "str", "[int]", "q_empty", ...).</summary>
    public string Name { get; } = name;

    public static QmpType Int { get; } = new QmpBuiltinType("int", "int", "integer", v => v.GetValueKind() == JsonValueKind.Number && v.AsValue().TryGetValue<long>(out _));
    public static QmpType Number { get; } = new QmpBuiltinType("number", "number", "number", v => v.GetValueKind() == JsonValueKind.Number);
    public static QmpType Str { get; } = new QmpBuiltinType("str", "string", "string", v => v.GetValueKind() == JsonValueKind.String);
    public static QmpType Bool { get; } = new QmpBuiltinType("bool", "boolean", "boolean", v => v.GetValueKind() is JsonValueKind.True or JsonValueKind.False);
    /// <summary>Any JSON value (QEMU's "any"); used for results too rich to declare member by member.</summary>
    public static QmpType Any { get; } = new QmpBuiltinType("any", "value", null, _ => true);

    /// <summary>Throws QEMU's error when <paramref name="value"/> does not fit; <paramref name="path"/> names it.</summary>
    internal abstract void Check(JsonNode? value, string path);

    /// <summary>This type's SchemaInfo entry.</summary>
    internal abstract JsonObject ToSchemaInfo();

    /// <summary>The types this one's entry names (members, elements).</summary>
    internal virtual IEnumerable<QmpType> Referenced => [];

    private protected static QmpException InvalidType(string path, string expected) =>
        new(QmpException.GenericError, $"Invalid parameter type for '{(path.Length == 0 ? "null" : path)}', expected: {expected}");
}

internal sealed class QmpBuiltinType(string name, string jsonType, string? expected, Func<JsonNode, bool> accepts) : QmpType(name)
{
    internal override void Check(JsonNode? value, string path)
    {
        // JSON null is a value, not an absent member: only "any" takes it, as in QEMU.
        if (expected is not null && (value is null || !accepts(value)))
            throw InvalidType(path, expected);
    }

    internal override JsonObject ToSchemaInfo() => new() { ["name"] = Name, ["meta-type"] = "builtin", ["json-type"] = jsonType };
}

/// <summary>A list of <see cref="Element"/> (QEMU's "[T]").</summary>
public sealed class QmpArrayType(QmpType element) : QmpType($"[{element.Name}]")
{
    public QmpType Element { get; } = element;

    internal override void Check(JsonNode? value, string path)
    {
        if (value is not JsonArray list)
            throw InvalidType(path, "array");
        for (var i = 0; i < list.Count; i++)
            Element.Check(list[i], $"{path}[{i}]");
    }

    internal override JsonObject ToSchemaInfo() => new() { ["name"] = Name, ["meta-type"] = "array", ["element-type"] = Element.Name };

    internal override IEnumerable<QmpType> Referenced => [Element];
}

/// <summary>A string with a fixed set of values.</summary>
public sealed class QmpEnumType(string name, IReadOnlyList<string> values) : QmpType(name)
{
    public IReadOnlyList<string> Values { get; } = values;

    internal override void Check(JsonNode? value, string path)
    {
        if (value is null || value.GetValueKind() != JsonValueKind.String)
            throw InvalidType(path, "string");
        var text = value.GetValue<string>();
        if (!Values.Contains(text, StringComparer.Ordinal))
            throw new QmpException(QmpException.GenericError, $"Parameter '{path}' does not accept value '{text}'");
    }

    internal override JsonObject ToSchemaInfo() => new()
    {
        ["name"] = Name,
        ["meta-type"] = "enum",
        ["values"] = new JsonArray([.. Values.Select(v => (JsonNode)v)]),
        ["members"] = new JsonArray([.. Values.Select(v => (JsonNode)new JsonObject { ["name"] = v })]),
    };
}

/// <summary>One member of an object type; an optional member may be absent (QEMU's "*name").</summary>
public sealed record QmpMember(string Name, QmpType Type, bool Optional = false);

/// <summary>A JSON object with declared members and no others.</summary>
public sealed class QmpObjectType(string name, IReadOnlyList<QmpMember> members) : QmpType(name)
{
    /// <summary>No members: the arguments of a command that takes none, the result of one that returns nothing.</summary>
    public static QmpObjectType Empty { get; } = new("q_empty", []);

    public IReadOnlyList<QmpMember> Members { get; } = members;

    /// <summary>
    /// The object type of a record bound with System.Text.Json source generation: one member per property (its
    /// JSON name), required where the property is `required`. Property types map to int (any integer type), number,
    /// str, bool, any (JsonNode), lists and nested records.
    /// </summary>
    public static QmpObjectType From<T>(JsonTypeInfo<T> typeInfo) => From(typeInfo, typeInfo.Type.Name);

    private static QmpObjectType From(JsonTypeInfo typeInfo, string name)
    {
        if (typeInfo.Kind != JsonTypeInfoKind.Object)
            throw new ArgumentException($"{typeInfo.Type.Name} is not an object type", nameof(typeInfo));
        return new QmpObjectType(name, [.. typeInfo.Properties.Select(p => new QmpMember(p.Name, Map(p.PropertyType, typeInfo.Options), !p.IsRequired))]);
    }

    private static QmpType Map(Type type, JsonSerializerOptions options)
    {
        type = Nullable.GetUnderlyingType(type) ?? type;
        if (type == typeof(long) || type == typeof(int) || type == typeof(uint) || type == typeof(short))
            return Int;
        if (type == typeof(double))
            return Number;
        if (type == typeof(string))
            return Str;
        if (type == typeof(bool))
            return Bool;
        if (typeof(JsonNode).IsAssignableFrom(type))
            return Any;
        var info = options.GetTypeInfo(type);
        if (info.Kind == JsonTypeInfoKind.Enumerable && info.ElementType is { } element)
            return new QmpArrayType(Map(element, options));
        return From(info, type.Name);
    }

    internal override void Check(JsonNode? value, string path)
    {
        if (value is not JsonObject obj)
            throw InvalidType(path, "object");
        // QEMU visits the declared members in order, then complains about the first one left over.
        foreach (var member in Members)
        {
            var memberPath = path.Length == 0 ? member.Name : $"{path}.{member.Name}";
            if (!obj.TryGetPropertyValue(member.Name, out var memberValue))
            {
                if (!member.Optional)
                    throw new QmpException(QmpException.GenericError, $"Parameter '{memberPath}' is missing");
                continue;
            }
            member.Type.Check(memberValue, memberPath);
        }
        foreach (var (key, _) in obj)
        {
            if (!Members.Any(m => m.Name == key))
                throw new QmpException(QmpException.GenericError, $"Parameter '{(path.Length == 0 ? key : $"{path}.{key}")}' is unexpected");
        }
    }

    internal override JsonObject ToSchemaInfo() => new()
    {
        ["name"] = Name,
        ["meta-type"] = "object",
        ["members"] = new JsonArray([.. Members.Select(m =>
        {
            var member = new JsonObject { ["name"] = m.Name, ["type"] = m.Type.Name };
            // QEMU marks an optional member with "default": null.
            if (m.Optional)
                member["default"] = null;
            return (JsonNode)member;
        })]),
    };

    internal override IEnumerable<QmpType> Referenced => Members.Select(m => m.Type);
}
