using System.Net.Sockets;
using System.Text.Json.Nodes;
using Ferry.Control;

namespace Ferry.Fuzz;

/// <summary>
/// QMP framing and dispatch, in process: the input is what a client sends. It is framed by the server's own
/// JSON-stream scanner (<see cref="QmpMessageScanner"/>), fed in pieces whose sizes the input chooses (a message
/// split across reads, several per read), and each message goes through the server's dispatcher (JSON parsing,
/// negotiation, command lookup, argument checks against the declared types) to the command handlers that need no
/// VM (the core commands, HMP, and the migration parameter and capability commands). The dispatcher turns any
/// exception into an error reply, so every handler is wrapped: a handler that throws anything but
/// <see cref="QmpException"/> is a crash. Every reply must be a return or an error and serialise.
/// </summary>
public static class QmpTarget
{
    [ThreadStatic]
    private static Exception? t_unexpected;

    public static void Run(byte[] input)
    {
        var server = new QmpServer(Path.Combine(Path.GetTempPath(), "ferry-fuzz-qmp-never-bound.sock"));
        new MigrationSettingsCommands(new object(), () => null).Register(server);
        foreach (var command in server.Commands)
        {
            var handler = command.Handler;
            server.Register(command.Name, command.Arguments, command.Returns, arguments => Guard(handler, arguments));
        }
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        using var connection = new QmpConnection(socket);
        var scanner = new QmpMessageScanner();
        var scanned = new List<QmpScanned>();
        // The first byte chooses the read size, so messages split across reads and several per read both happen.
        var chunk = input.Length == 0 ? 1 : 1 + input[0] % 64 * 97;
        var requests = 0;
        for (var at = input.Length == 0 ? 0 : 1; at < input.Length && requests < 1000; at += chunk)
        {
            scanned.Clear();
            scanner.Feed(input.AsSpan(at, Math.Min(chunk, input.Length - at)), scanned);
            foreach (var item in scanned)
            {
                requests++;
                if (item.Error is not null)
                    continue;
                var reply = server.Dispatch(connection, item.Message!);
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
    }

    private static JsonNode? Guard(QmpHandler handler, JsonObject arguments)
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
