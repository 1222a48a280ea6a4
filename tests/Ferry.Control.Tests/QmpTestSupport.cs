using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Ferry.Machine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>A machine for the machine commands without KVM: records pause/resume and answers query-status.</summary>
internal sealed class FakeMachine : IMachineControl
{
    public MachineStatus Status { get; private set; } = MachineStatus.Running;

    public ShutdownCause? EndedWith { get; private set; }

    public void PauseGuest() => Status = MachineStatus.Paused;

    public void ResumeGuest() => Status = MachineStatus.Running;

    public void EndMachine(ShutdownCause cause, string detail) => (Status, EndedWith) = (MachineStatus.Shutdown, cause);
}

/// <summary>A QMP server with what `ferry run` registers that needs no KVM: machine commands over a fake, migration settings.</summary>
internal sealed class FerryLikeServer : IAsyncDisposable
{
    public FerryLikeServer()
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
        Server = new QmpServer(Path);
        MachineCommands.Register(Server, Machine);
        new MigrationSettingsCommands(new object(), () => null).Register(Server);
        Server.Start();
    }

    public string Path { get; }

    public QmpServer Server { get; }

    public FakeMachine Machine { get; } = new();

    public ValueTask DisposeAsync() => Server.DisposeAsync();
}

/// <summary>A client that writes raw bytes and reads the server's messages (each one line, as Ferry writes them).</summary>
internal sealed class RawQmpClient : IDisposable
{
    private readonly Socket _socket = new(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
    private readonly NetworkStream _stream;
    private readonly StreamReader _reader;

    public RawQmpClient(string path)
    {
        _socket.Connect(new UnixDomainSocketEndPoint(path));
        _stream = new NetworkStream(_socket, ownsSocket: true);
        _reader = new StreamReader(_stream, Encoding.UTF8);
    }

    public Socket Socket => _socket;

    public async Task<JsonObject> ReadAsync()
    {
        var line = await _reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(30)) ?? throw new IOException("closed");
        return (JsonObject)JsonNode.Parse(line)!;
    }

    public Task WriteAsync(string text) => _stream.WriteAsync(Encoding.UTF8.GetBytes(text)).AsTask();

    public async Task<JsonObject> NegotiateAsync()
    {
        var greeting = await ReadAsync();
        await WriteAsync("""{"execute":"qmp_capabilities"}""");
        Assert.NotNull((await ReadAsync())["return"]);
        return greeting;
    }

    public async Task<JsonObject> CallAsync(string request)
    {
        await WriteAsync(request);
        return await ReadAsync();
    }

    public static string Desc(JsonObject reply) => reply["error"]?["desc"]?.GetValue<string>() ?? $"(no error: {reply.ToJsonString()})";

    public void Dispose()
    {
        _reader.Dispose();
        _stream.Dispose();
    }
}
