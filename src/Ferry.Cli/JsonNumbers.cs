using System.Text.Json.Nodes;

namespace Ferry.Cli;

/// <summary>Numbers read from QMP replies: absent, null or not a number is 0, never an exception.</summary>
internal static class JsonNumbers
{
    public static long Long(JsonNode? node) => node is JsonValue value
        ? value.TryGetValue(out long l) ? l : value.TryGetValue(out int i) ? i : value.TryGetValue(out double d) ? (long)d : 0
        : 0;

    public static double Double(JsonNode? node) => node is JsonValue value
        ? value.TryGetValue(out double d) ? d : Long(node)
        : 0;
}
