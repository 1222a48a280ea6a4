using System.Net.Sockets;
using System.Reflection;
using System.Text.Json.Nodes;
using Ferry.Control;

namespace Ferry.Fuzz;

/// <summary>
/// QMP framing and dispatch, in process: the input is what a client sends; it is framed into lines by the server's
/// own line reader and each line goes through the server's dispatcher (JSON parsing, negotiation, command lookup,
/// arguments) to the command handlers that need no VM (qmp_capabilities, query-commands and the migration parameter
/// and capability commands). The dispatcher turns any exception into an error reply, so every handler is wrapped:
/// a handler that throws anything but <see cref="QmpException"/> is a crash. Every reply must serialise.
/// The server's framing is internal and being reworked, so this harness reaches it by reflection and is the one
/// place to re-point when it changes.
/// </summary>
public static class QmpTarget
{
    private const BindingFlags Private = BindingFlags.NonPublic | BindingFlags.Instance;
    private const int MaxRequestBytes = 1 << 20;

    private static readonly FieldInfo Commands = typeof(QmpServer).GetField("_commands", Private)
        ?? throw new MissingFieldException(nameof(QmpServer), "_commands");
    private static readonly MethodInfo Dispatch = typeof(QmpServer).GetMethod("Dispatch", Private)
        ?? throw new MissingMethodException(nameof(QmpServer), "Dispatch");
    private static readonly Type ConnectionType = typeof(QmpServer).GetNestedType("Connection", BindingFlags.NonPublic)
        ?? throw new TypeLoadException("QmpServer.Connection");
    private static readonly Type LineReaderType = typeof(QmpServer).Assembly.GetType("Ferry.Control.BoundedLineReader")
        ?? throw new TypeLoadException("Ferry.Control.BoundedLineReader");
    private static readonly MethodInfo ReadLine = LineReaderType.GetMethod("ReadLineAsync")
        ?? throw new MissingMethodException("BoundedLineReader", "ReadLineAsync");

    [ThreadStatic]
    private static Exception? t_unexpected;

    public static void Run(byte[] input)
    {
        var server = new QmpServer(Path.Combine(Path.GetTempPath(), "ferry-fuzz-qmp-never-bound.sock"));
        new MigrationSettingsCommands(new object(), () => null).Register(server);
        var commands = (Dictionary<string, QmpHandler>)Commands.GetValue(server)!;
        foreach (var (name, handler) in commands.ToArray())
            commands[name] = arguments => Guard(handler, arguments);
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        using var connection = (IDisposable)Activator.CreateInstance(ConnectionType, socket)!;
        var reader = Activator.CreateInstance(LineReaderType, new MemoryStream(input, writable: false), MaxRequestBytes)!;
        for (var requests = 0; requests < 1000; requests++)
        {
            var task = (Task<(string? Line, bool OverLong)>)ReadLine.Invoke(reader, [CancellationToken.None])!;
            var (line, overLong) = task.GetAwaiter().GetResult();
            if (overLong || line is null)
                return;
            if (string.IsNullOrWhiteSpace(line))
                continue;
            var reply = (JsonObject)Dispatch.Invoke(server, [connection, line])!;
            if (t_unexpected is { } e)
            {
                t_unexpected = null;
                throw new FuzzOracleException($"a QMP handler threw {e.GetType().Name} instead of a QMP error: {e.Message}", e);
            }
            if ((reply["return"] is null) == (reply["error"] is null))
                throw new FuzzOracleException($"reply is neither a return nor an error: {reply.ToJsonString()}");
            _ = reply.ToJsonString();
        }
    }

    private static JsonNode? Guard(QmpHandler handler, JsonObject? arguments)
    {
        try
        {
            return handler(arguments);
        }
        catch (QmpException)
        {
            throw;
        }
        catch (Exception e)
        {
            t_unexpected ??= e;
            throw;
        }
    }
}
