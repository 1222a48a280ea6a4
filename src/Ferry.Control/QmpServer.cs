using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace Ferry.Control;

/// <summary>A QMP command handler: arguments in (may be null), the "return" value out (null means {}).</summary>
public delegate JsonNode? QmpHandler(JsonObject? arguments);

/// <summary>
/// A QMP-compatible server on a Unix socket: greeting, capabilities negotiation, {"execute", "arguments", "id"}
/// requests answered with {"return"} or {"error": {"class", "desc"}}, and asynchronous events. Requests are
/// JSON objects, one per line (what QEMU's own clients send). Every input is treated as hostile: bad JSON, unknown
/// commands and bad arguments get an error reply and the connection goes on.
/// </summary>
public sealed class QmpServer : IAsyncDisposable
{
    private const int MaxRequestBytes = 1 << 20;

    private readonly Dictionary<string, QmpHandler> _commands = new(StringComparer.Ordinal);
    private readonly List<Connection> _connections = [];
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stopping = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private int _disposed;

    public QmpServer(string socketPath)
    {
        SocketPath = socketPath;
        Register("qmp_capabilities", _ => null);
        Register("query-commands", _ => new JsonArray([.. _commands.Keys.Order().Select(k => (JsonNode)new JsonObject { ["name"] = k })]));
    }

    public string SocketPath { get; }

    public void Register(string name, QmpHandler handler) => _commands[name] = handler;

    public void Start()
    {
        if (File.Exists(SocketPath))
            File.Delete(SocketPath);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        listener.Listen(8);
        _listener = listener;
        _acceptLoop = Task.Run(AcceptLoopAsync);
    }

    /// <summary>Sends {"event": name, "data": data, "timestamp": ...} to every negotiated client.</summary>
    public void Emit(string name, JsonObject? data = null)
    {
        var now = DateTimeOffset.UtcNow;
        var message = new JsonObject
        {
            ["event"] = name,
            ["data"] = data ?? new JsonObject(),
            ["timestamp"] = new JsonObject { ["seconds"] = now.ToUnixTimeSeconds(), ["microseconds"] = now.Millisecond * 1000 + now.Microsecond },
        };
        Connection[] targets;
        lock (_lock)
            targets = [.. _connections.Where(c => c.Negotiated)];
        foreach (var c in targets)
            _ = c.SendAsync(message);
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
                continue;
            }
            var connection = new Connection(client);
            lock (_lock)
                _connections.Add(connection);
            _ = Task.Run(() => ServeAsync(connection));
        }
    }

    private async Task ServeAsync(Connection connection)
    {
        try
        {
            await connection.SendAsync(new JsonObject
            {
                ["QMP"] = new JsonObject
                {
                    ["version"] = new JsonObject
                    {
                        ["qemu"] = new JsonObject { ["micro"] = 0, ["minor"] = 0, ["major"] = 0 },
                        ["package"] = "ferry",
                    },
                    ["capabilities"] = new JsonArray(),
                },
            }).ConfigureAwait(false);
            using var stream = new NetworkStream(connection.Socket, ownsSocket: false);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            while (!_stopping.IsCancellationRequested)
            {
                var line = await reader.ReadLineAsync(_stopping.Token).ConfigureAwait(false);
                if (line is null)
                    return;
                if (string.IsNullOrWhiteSpace(line))
                    continue;
                var reply = Dispatch(connection, line);
                await connection.SendAsync(reply).ConfigureAwait(false);
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

    /// <summary>Parses and runs one request; always returns the reply object.</summary>
    internal JsonObject Dispatch(Connection connection, string line)
    {
        JsonNode? id = null;
        try
        {
            if (line.Length > MaxRequestBytes)
                throw new QmpException(QmpException.GenericError, $"request of {line.Length} bytes is over the {MaxRequestBytes}-byte limit");
            JsonObject request;
            try
            {
                request = JsonNode.Parse(line) as JsonObject ?? throw new QmpException(QmpException.GenericError, "QMP input must be a JSON object");
            }
            catch (JsonException e)
            {
                throw new QmpException(QmpException.GenericError, $"JSON parse error: {e.Message}");
            }
            id = request["id"]?.DeepClone();
            if (request["execute"] is not JsonValue executeValue || !executeValue.TryGetValue<string>(out var name))
                throw new QmpException(QmpException.GenericError, "QMP input lacks member 'execute' (a string)");
            var arguments = request["arguments"];
            if (arguments is not null and not JsonObject)
                throw new QmpException(QmpException.GenericError, "QMP input member 'arguments' must be an object");
            if (!connection.Negotiated && name != "qmp_capabilities")
                throw new QmpException(QmpException.CommandNotFound, $"Expecting capabilities negotiation with 'qmp_capabilities' before '{name}'");
            if (connection.Negotiated && name == "qmp_capabilities")
                throw new QmpException(QmpException.CommandNotFound, "Capabilities negotiation is already complete, command ignored");
            if (!_commands.TryGetValue(name, out var handler))
                throw new QmpException(QmpException.CommandNotFound, $"The command {name} has not been found");
            var result = handler((JsonObject?)arguments) ?? new JsonObject();
            if (name == "qmp_capabilities")
                connection.Negotiated = true;
            return WithId(new JsonObject { ["return"] = result }, id);
        }
        catch (QmpException e)
        {
            return WithId(new JsonObject { ["error"] = new JsonObject { ["class"] = e.Class, ["desc"] = e.Message } }, id);
        }
        catch (Exception e) when (e is InvalidOperationException or ArgumentException or TimeoutException or FormatException)
        {
            return WithId(new JsonObject { ["error"] = new JsonObject { ["class"] = QmpException.GenericError, ["desc"] = e.Message } }, id);
        }
    }

    private static JsonObject WithId(JsonObject reply, JsonNode? id)
    {
        if (id is not null)
            reply["id"] = id;
        return reply;
    }

    public async ValueTask DisposeAsync()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener?.Dispose();
        if (_acceptLoop is not null)
            await _acceptLoop.ConfigureAwait(false);
        Connection[] open;
        lock (_lock)
            open = [.. _connections];
        foreach (var c in open)
            c.Socket.Dispose();
        _stopping.Dispose();
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }

    internal sealed class Connection(Socket socket) : IDisposable
    {
        private readonly SemaphoreSlim _sendLock = new(1, 1);

        public Socket Socket { get; } = socket;

        public bool Negotiated { get; set; }

        public void Dispose()
        {
            Socket.Dispose();
            _sendLock.Dispose();
        }

        public async Task SendAsync(JsonObject message)
        {
            var bytes = Encoding.UTF8.GetBytes(message.ToJsonString() + "\r\n");
            await _sendLock.WaitAsync().ConfigureAwait(false);
            try
            {
                await Socket.SendAsync(bytes, SocketFlags.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
            finally
            {
                _sendLock.Release();
            }
        }
    }
}
