using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization.Metadata;
using Ferry.Interop;

namespace Ferry.Control;

/// <summary>A QMP command handler: its arguments, already checked against the command's declared type (never null; {} when none were given), in; the "return" value out (null means {}).</summary>
public delegate JsonNode? QmpHandler(JsonObject arguments);

/// <summary>One registered command: its declared argument and result types (what query-qmp-schema shows) and its handler.</summary>
internal sealed record QmpCommand(string Name, QmpObjectType Arguments, QmpType Returns, QmpHandler Handler);

/// <summary>
/// A QMP server on a Unix socket, as QEMU's users expect it (docs/qmp.md): greeting with a version, capabilities
/// negotiation, {"execute", "arguments", "id"} requests answered with {"return"} or {"error": {"class", "desc"}} in
/// QEMU's wording, and asynchronous events. Input is a JSON stream (<see cref="QmpMessageScanner"/>), not lines.
/// Every command declares its argument type once (<see cref="QmpObjectType"/>); a request is checked against it
/// before the handler runs, and the same declarations answer query-qmp-schema. Every input is hostile: bad JSON,
/// unknown commands and bad arguments get an error reply and the connection goes on; no .NET exception text reaches
/// a client. A client whose replies back up is no longer read until it catches up (<see cref="QmpConnection"/>).
/// </summary>
public sealed class QmpServer : IAsyncDisposable
{
    private const int MaxConnections = 16;

    private static readonly JsonDocumentOptions ParseOptions = new() { MaxDepth = QmpMessageScanner.MaxDepth, AllowDuplicateProperties = false };

    private readonly Dictionary<string, QmpCommand> _commands = new(StringComparer.Ordinal);
    private readonly Dictionary<string, QmpObjectType> _events = new(StringComparer.Ordinal);
    private readonly List<QmpConnection> _connections = [];
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stopping = new();
    private readonly QmpEventThrottle _throttle;
    private Socket? _listener;
    private Task? _acceptLoop;
    private readonly List<Task> _serving = [];
    private int _disposed;

    public QmpServer(string socketPath)
    {
        SocketPath = socketPath;
        _throttle = new QmpEventThrottle(Broadcast);
        QmpCoreCommands.Register(this);
        HmpCommands.Register(this);
    }

    public string SocketPath { get; }

    /// <summary>The socket file's mode: the owner only unless the user widens it (whoever connects controls the VM).</summary>
    public UnixFileMode SocketMode { get; init; } = UnixListener.PrivateMode;

    /// <summary>Raised when the server is disposed (command sets release their timers).</summary>
    public event Action? Disposing;

    /// <summary>Registers a command whose arguments are checked against <paramref name="arguments"/> before <paramref name="handler"/> sees them.</summary>
    public void Register(string name, QmpObjectType arguments, QmpType returns, QmpHandler handler)
    {
        lock (_lock)
            _commands[name] = new QmpCommand(name, arguments, returns, handler);
    }

    /// <summary>Registers a command taking no arguments.</summary>
    public void Register(string name, QmpType returns, Func<JsonNode?> handler) =>
        Register(name, QmpObjectType.Empty, returns, _ => handler());

    /// <summary>
    /// Registers a command whose arguments are the record <typeparamref name="T"/> (declared in
    /// <see cref="QmpArgumentsContext"/>): its properties are the command's members, checked, then bound.
    /// </summary>
    public void Register<T>(string name, JsonTypeInfo<T> arguments, QmpType returns, Func<T, JsonNode?> handler)
    {
        var type = QmpObjectType.From(arguments);
        Register(name, type, returns, args =>
        {
            T bound;
            try
            {
                bound = args.Deserialize(arguments) ?? throw new JsonException();
            }
            catch (JsonException)
            {
                // The arguments were checked against the same declaration, so this is Ferry's bug, not the client's.
                throw new QmpException(QmpException.GenericError, $"internal error binding the arguments of '{name}'");
            }
            return handler(bound);
        });
    }

    /// <summary>Declares an event: it is listed by query-events and query-qmp-schema, and only declared events can be emitted.</summary>
    public void DeclareEvent(string name, QmpObjectType? data = null)
    {
        lock (_lock)
            _events[name] = data ?? QmpObjectType.Empty;
    }

    internal IReadOnlyList<QmpCommand> Commands
    {
        get
        {
            lock (_lock)
                return [.. _commands.Values.OrderBy(c => c.Name, StringComparer.Ordinal)];
        }
    }

    internal IReadOnlyList<KeyValuePair<string, QmpObjectType>> Events
    {
        get
        {
            lock (_lock)
                return [.. _events.OrderBy(e => e.Key, StringComparer.Ordinal)];
        }
    }

    public void Start()
    {
        var listener = UnixListener.Listen(SocketPath, SocketMode, backlog: 8);
        _listener = listener;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>
    /// Sends {"event": name, "data": data, "timestamp": ...} to every negotiated client. Never blocks: a client that
    /// does not read loses events past its output limit, and QEMU's noisy events are rate-limited.
    /// </summary>
    public void Emit(string name, JsonObject? data = null)
    {
        lock (_lock)
        {
            if (!_events.ContainsKey(name))
                throw new InvalidOperationException($"QMP event {name} is emitted but not declared");
        }
        var now = DateTimeOffset.UtcNow;
        _throttle.Emit(name, new JsonObject
        {
            ["event"] = name,
            ["data"] = data ?? new JsonObject(),
            ["timestamp"] = new JsonObject { ["seconds"] = now.ToUnixTimeSeconds(), ["microseconds"] = now.Millisecond * 1000 + now.Microsecond },
        });
    }

    private void Broadcast(string name, JsonObject message)
    {
        var bytes = QmpConnection.Encode(message);
        QmpConnection[] targets;
        lock (_lock)
            targets = [.. _connections.Where(c => c.Negotiated)];
        foreach (var c in targets)
            c.Event(bytes);
    }

    /// <summary>Runs a command from inside Ferry (HMP): checked like a client's; throws <see cref="QmpException"/> with its error.</summary>
    internal JsonNode Execute(string name, JsonObject? arguments = null)
    {
        QmpCommand? command;
        lock (_lock)
            _commands.TryGetValue(name, out command);
        if (command is null)
            throw new QmpException(QmpException.CommandNotFound, $"The command {name} has not been found");
        arguments ??= [];
        command.Arguments.Check(arguments, "");
        return command.Handler(arguments) ?? new JsonObject();
    }

    private async Task AcceptLoopAsync()
    {
        while (!_stopping.IsCancellationRequested)
        {
            Socket client;
            try
            {
                client = await _listener!.AcceptAsync(_stopping.Token).ConfigureAwait(false);
            }
            catch (Exception) when (_stopping.IsCancellationRequested)
            {
                return;
            }
            catch (SocketException)
            {
                // Out of descriptors or a transient error: back off instead of spinning.
                await Task.Delay(100).ConfigureAwait(false);
                continue;
            }
            lock (_lock)
            {
                if (_connections.Count >= MaxConnections)
                {
                    client.Dispose();
                    continue;
                }
                var connection = new QmpConnection(client);
                _connections.Add(connection);
                _serving.RemoveAll(t => t.IsCompleted);
                _serving.Add(Task.Run(() => ServeAsync(connection)));
            }
        }
    }

    private async Task ServeAsync(QmpConnection connection)
    {
        try
        {
            connection.Reply(new JsonObject
            {
                ["QMP"] = new JsonObject
                {
                    ["version"] = QmpCoreCommands.Version(),
                    // No "oob": Ferry runs commands in order, so exec-oob is refused as QEMU does when oob is off.
                    ["capabilities"] = new JsonArray(),
                },
            });
            var scanner = new QmpMessageScanner();
            var buffer = new byte[64 * 1024];
            var scanned = new List<QmpScanned>();
            while (!_stopping.IsCancellationRequested)
            {
                var read = await connection.Socket.ReceiveAsync(buffer, SocketFlags.None, _stopping.Token).ConfigureAwait(false);
                if (read == 0)
                    return;
                scanned.Clear();
                scanner.Feed(buffer.AsSpan(0, read), scanned);
                foreach (var item in scanned)
                {
                    // Back-pressure: a client that does not read its replies is not read either, so none is dropped.
                    await connection.WaitForRoomAsync(_stopping.Token).ConfigureAwait(false);
                    connection.Reply(item.Error is { } error ? ErrorReply(QmpException.GenericError, error, null) : Dispatch(connection, item.Message!));
                }
            }
        }
        catch (Exception e) when (e is IOException or SocketException or OperationCanceledException or ObjectDisposedException)
        {
            // The client went away or the server is stopping.
        }
        finally
        {
            lock (_lock)
                _connections.Remove(connection);
            connection.Dispose();
        }
    }

    /// <summary>Parses and runs one request (a complete JSON text); always returns the reply object.</summary>
    internal JsonObject Dispatch(QmpConnection connection, ReadOnlySpan<byte> message)
    {
        JsonNode? id = null;
        string? name = null;
        try
        {
            JsonNode? parsed;
            try
            {
                parsed = JsonNode.Parse(message, documentOptions: ParseOptions);
            }
            catch (JsonException e)
            {
                // QEMU's prefix; the position instead of .NET's wording (clients match the class, people read the rest).
                throw new QmpException(QmpException.GenericError, $"JSON parse error, invalid JSON at line {e.LineNumber + 1}, byte {e.BytePositionInLine + 1}");
            }
            if (parsed is not JsonObject request)
                throw new QmpException(QmpException.GenericError, "QMP input must be a JSON object");
            id = request["id"]?.DeepClone();
            // Member checks as QEMU's qmp_dispatch_check_obj, with oob never negotiated (so exec-oob is unexpected).
            JsonObject arguments = [];
            foreach (var (key, value) in request)
            {
                switch (key)
                {
                    case "execute":
                        name = value is not null && value.GetValueKind() == JsonValueKind.String ? value.GetValue<string>()
                            : throw new QmpException(QmpException.GenericError, "QMP input member 'execute' must be a string");
                        break;
                    case "arguments":
                        arguments = value as JsonObject ?? throw new QmpException(QmpException.GenericError, "QMP input member 'arguments' must be an object");
                        break;
                    case "id":
                        break;
                    default:
                        throw new QmpException(QmpException.GenericError, $"QMP input member '{key}' is unexpected");
                }
            }
            if (name is null)
                throw new QmpException(QmpException.GenericError, "QMP input lacks member 'execute'");
            QmpCommand? command;
            lock (_lock)
                _commands.TryGetValue(name, out command);
            if (!connection.Negotiated && name != QmpCoreCommands.Capabilities)
                throw new QmpException(QmpException.CommandNotFound, "Expecting capabilities negotiation with 'qmp_capabilities'");
            if (connection.Negotiated && name == QmpCoreCommands.Capabilities)
                throw new QmpException(QmpException.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
            if (command is null)
                throw new QmpException(QmpException.CommandNotFound, $"The command {name} has not been found");
            command.Arguments.Check(arguments, "");
            var result = command.Handler(arguments) ?? new JsonObject();
            if (name == QmpCoreCommands.Capabilities)
                connection.Negotiated = true;
            return WithId(new JsonObject { ["return"] = result }, id);
        }
        catch (QmpException e)
        {
            return ErrorReply(e.Class, e.Message, id);
        }
        catch (Exception e)
        {
            // A handler bug: the client gets an answer, but not .NET's text or stack; that goes to Ferry's log.
            Console.Error.WriteLine($"ferry: QMP command {name ?? "?"} failed: {e}");
            return ErrorReply(QmpException.GenericError, $"internal error in command '{name}'", id);
        }
    }

    private static JsonObject ErrorReply(string errorClass, string desc, JsonNode? id) =>
        WithId(new JsonObject { ["error"] = new JsonObject { ["class"] = errorClass, ["desc"] = desc } }, id);

    private static JsonObject WithId(JsonObject reply, JsonNode? id)
    {
        if (id is not null)
            reply["id"] = id;
        return reply;
    }

    /// <summary>Output waiting for each connected client, for tests of the bounds.</summary>
    internal IReadOnlyList<(long QueuedBytes, long DroppedEvents)> ConnectionStats()
    {
        lock (_lock)
            return [.. _connections.Select(c => (c.QueuedBytes, c.DroppedEvents))];
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        Disposing?.Invoke();
        _throttle.Dispose();
        // Let queued messages (a final MIGRATION or SHUTDOWN event) reach the clients before anything closes.
        QmpConnection[] draining;
        lock (_lock)
            draining = [.. _connections];
        await Task.WhenAll(draining.Select(c => c.DrainAsync(TimeSpan.FromSeconds(1)))).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener?.Dispose();
        if (_acceptLoop is not null)
            await _acceptLoop.ConfigureAwait(false);
        QmpConnection[] open;
        Task[] serving;
        lock (_lock)
        {
            open = [.. _connections];
            serving = [.. _serving];
        }
        foreach (var c in open)
            c.Socket.Dispose();
        // Handlers in flight finish before the caller tears the machine down under them.
        await Task.WhenAll(serving).WaitAsync(TimeSpan.FromSeconds(15)).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        _stopping.Dispose();
        if (_listener is null)
            return; // never listened: the path, if any, belongs to someone else
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }
}
