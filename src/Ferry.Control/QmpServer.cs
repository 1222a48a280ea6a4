using System.Net.Sockets;
using System.Text;
using System.Threading.Channels;
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
    private const int MaxConnections = 16;
    private const int MaxQueuedMessages = 256;

    private readonly Dictionary<string, QmpHandler> _commands = new(StringComparer.Ordinal);
    private readonly List<Connection> _connections = [];
    private readonly Lock _lock = new();
    private readonly CancellationTokenSource _stopping = new();
    private Socket? _listener;
    private Task? _acceptLoop;
    private readonly List<Task> _serving = [];
    private int _disposed;

    public QmpServer(string socketPath)
    {
        SocketPath = socketPath;
        Register("qmp_capabilities", _ => null);
        Register("query-commands", _ => new JsonArray([.. _commands.Keys.Order().Select(k => (JsonNode)new JsonObject { ["name"] = k })]));
    }

    public string SocketPath { get; }

    /// <summary>Raised when the server is disposed (command sets release their timers).</summary>
    public event Action? Disposing;

    public void Register(string name, QmpHandler handler) => _commands[name] = handler;

    public void Start()
    {
        if (File.Exists(SocketPath))
            File.Delete(SocketPath);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(SocketPath));
        }
        catch (SocketException e)
        {
            listener.Dispose();
            throw new IOException($"cannot listen on the QMP socket {SocketPath}: {e.Message}", e);
        }
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
                var connection = new Connection(client);
                _connections.Add(connection);
                _serving.RemoveAll(t => t.IsCompleted);
                _serving.Add(Task.Run(() => ServeAsync(connection)));
            }
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
            var reader = new BoundedLineReader(stream, MaxRequestBytes);
            while (!_stopping.IsCancellationRequested)
            {
                var (line, overLong) = await reader.ReadLineAsync(_stopping.Token).ConfigureAwait(false);
                if (overLong)
                {
                    // Nothing more from this client can be trusted to be framed correctly: answer, stop sending, and
                    // drain its input for a moment so closing does not reset the connection before it reads the answer.
                    var error = new JsonObject { ["error"] = new JsonObject { ["class"] = QmpException.GenericError, ["desc"] = $"request over the {MaxRequestBytes}-byte limit; closing" } };
                    await connection.Socket.SendAsync(Encoding.UTF8.GetBytes(error.ToJsonString() + "\r\n"), SocketFlags.None).ConfigureAwait(false);
                    connection.Socket.Shutdown(SocketShutdown.Send);
                    using var drain = new CancellationTokenSource(TimeSpan.FromSeconds(2));
                    var sink = new byte[64 * 1024];
                    try
                    {
                        while (await stream.ReadAsync(sink, drain.Token).ConfigureAwait(false) > 0)
                        {
                        }
                    }
                    catch (OperationCanceledException)
                    {
                    }
                    return;
                }
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
                request = JsonNode.Parse(line, documentOptions: new JsonDocumentOptions { AllowDuplicateProperties = false }) as JsonObject ?? throw new QmpException(QmpException.GenericError, "QMP input must be a JSON object");
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
        catch (Exception e)
        {
            // Whatever a handler throws becomes an error reply: the client always gets an answer.
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
        Disposing?.Invoke();
        // Let queued messages (a final MIGRATION or SHUTDOWN event) reach the clients before anything closes.
        Connection[] draining;
        lock (_lock)
            draining = [.. _connections];
        await Task.WhenAll(draining.Select(c => c.DrainAsync(TimeSpan.FromSeconds(1)))).ConfigureAwait(ConfigureAwaitOptions.SuppressThrowing);
        await _stopping.CancelAsync().ConfigureAwait(false);
        _listener?.Dispose();
        if (_acceptLoop is not null)
            await _acceptLoop.ConfigureAwait(false);
        Connection[] open;
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
        try
        {
            File.Delete(SocketPath);
        }
        catch (IOException)
        {
        }
    }

    /// <summary>
    /// One client. Outgoing messages go through a bounded queue drained by one writer, so a client that does not
    /// read cannot make the server hold an unbounded backlog (the oldest events are dropped).
    /// </summary>
    internal sealed class Connection : IDisposable
    {
        private readonly Channel<byte[]> _outgoing = Channel.CreateBounded<byte[]>(new BoundedChannelOptions(MaxQueuedMessages)
        {
            FullMode = BoundedChannelFullMode.DropOldest,
            SingleReader = true,
        });

        private readonly Task _writeLoop;

        public Connection(Socket socket)
        {
            Socket = socket;
            _writeLoop = Task.Run(WriteLoopAsync);
        }

        public Socket Socket { get; }

        public bool Negotiated { get; set; }

        public Task SendAsync(JsonObject message)
        {
            _outgoing.Writer.TryWrite(Encoding.UTF8.GetBytes(message.ToJsonString() + "\r\n"));
            return Task.CompletedTask;
        }

        /// <summary>Lets the queued messages (e.g. a final event) reach the client before the socket closes.</summary>
        public Task DrainAsync(TimeSpan timeout)
        {
            _outgoing.Writer.TryComplete();
            return _writeLoop.WaitAsync(timeout);
        }

        private async Task WriteLoopAsync()
        {
            try
            {
                await foreach (var bytes in _outgoing.Reader.ReadAllAsync().ConfigureAwait(false))
                    await Socket.SendAsync(bytes, SocketFlags.None).ConfigureAwait(false);
            }
            catch (Exception e) when (e is SocketException or ObjectDisposedException)
            {
            }
        }

        public void Dispose()
        {
            _outgoing.Writer.TryComplete();
            Socket.Dispose();
        }
    }
}

/// <summary>Reads '\n'-terminated UTF-8 lines, refusing any line longer than a limit before buffering it.</summary>
internal sealed class BoundedLineReader(Stream stream, int maxBytes)
{
    private readonly byte[] _buffer = new byte[64 * 1024];
    private readonly System.Buffers.ArrayBufferWriter<byte> _line = new();
    private int _start, _end;

    /// <summary>The next line (without "\r\n"), null at end of stream, or OverLong when the limit was passed.</summary>
    public async Task<(string? Line, bool OverLong)> ReadLineAsync(CancellationToken cancel)
    {
        _line.ResetWrittenCount();
        while (true)
        {
            if (_start == _end)
            {
                _start = 0;
                _end = await stream.ReadAsync(_buffer, cancel).ConfigureAwait(false);
                if (_end == 0)
                    return (_line.WrittenCount > 0 ? Decode() : null, false);
            }
            var newline = Array.IndexOf(_buffer, (byte)'\n', _start, _end - _start);
            var take = (newline >= 0 ? newline : _end) - _start;
            if (_line.WrittenCount + take > maxBytes)
                return (null, true);
            System.Buffers.BuffersExtensions.Write(_line, _buffer.AsSpan(_start, take));
            _start += take;
            if (newline >= 0)
            {
                _start++;
                return (Decode(), false);
            }
        }
    }

    private string Decode() => Encoding.UTF8.GetString(_line.WrittenSpan).TrimEnd('\r');
}
