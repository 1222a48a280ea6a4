using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;

namespace Ferry.Control;

/// <summary>A QMP client: connects, negotiates, runs commands. Events arriving in between are kept.</summary>
public sealed class QmpClient : IDisposable
{
    private readonly Socket _socket;
    private readonly StreamReader _reader;
    private readonly StreamWriter _writer;

    private QmpClient(Socket socket)
    {
        _socket = socket;
        var stream = new NetworkStream(socket, ownsSocket: false);
        _reader = new StreamReader(stream, Encoding.UTF8);
        _writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true, NewLine = "\n" };
    }

    public List<JsonObject> Events { get; } = [];

    public static QmpClient Connect(string socketPath)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            socket.Connect(new UnixDomainSocketEndPoint(socketPath));
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new IOException($"cannot connect to the QMP socket {socketPath}: {e.Message}", e);
        }
        var client = new QmpClient(socket);
        client.ReadMessage(); // greeting
        client.Execute("qmp_capabilities");
        return client;
    }

    /// <summary>Runs a command; returns its "return" value or throws <see cref="QmpException"/> with the error.</summary>
    public JsonNode? Execute(string command, JsonObject? arguments = null)
    {
        var request = new JsonObject { ["execute"] = command };
        if (arguments is not null)
            request["arguments"] = arguments;
        _writer.WriteLine(request.ToJsonString());
        while (true)
        {
            var message = ReadMessage();
            if (message.ContainsKey("event"))
            {
                Events.Add(message);
                continue;
            }
            if (message["error"] is JsonObject error)
                throw new QmpException(error["class"]?.GetValue<string>() ?? QmpException.GenericError, error["desc"]?.GetValue<string>() ?? "error");
            return message["return"];
        }
    }

    /// <summary>
    /// After the server went away: reads whatever it sent before closing (e.g. a final event that arrived after the
    /// last reply) into <see cref="Events"/>.
    /// </summary>
    public void DrainEvents()
    {
        try
        {
            string? line;
            while ((line = _reader.ReadLine()) is not null)
            {
                if (JsonNode.Parse(line) is JsonObject message && message.ContainsKey("event"))
                    Events.Add(message);
            }
        }
        catch (Exception e) when (e is IOException or System.Text.Json.JsonException)
        {
            // Closed or cut mid-line: what was read is all there is.
        }
    }

    private JsonObject ReadMessage()
    {
        var line = _reader.ReadLine() ?? throw new IOException("the QMP server closed the connection");
        return JsonNode.Parse(line) as JsonObject ?? throw new IOException($"QMP server sent a non-object: {line}");
    }

    public void Dispose()
    {
        _reader.Dispose();
        _writer.Dispose();
        _socket.Dispose();
    }
}
