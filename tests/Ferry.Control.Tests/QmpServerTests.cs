using System.Net.Sockets;
using System.Text;
using System.Text.Json.Nodes;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>QMP framing over a real Unix socket, with a fake command set. No KVM needed.</summary>
public sealed class QmpServerTests : IAsyncLifetime, IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
    private QmpServer _server = null!;

    public Task InitializeAsync()
    {
        _server = new QmpServer(_path);
        _server.Register("echo", new QmpObjectType("echo-arg", [new("value", QmpType.Any)]), QmpType.Any, args => args["value"]?.DeepClone());
        _server.Register("fail", QmpObjectType.Empty, () => throw new QmpException(QmpException.GenericError, "failing on purpose"));
        _server.DeclareEvent("STOP");
        _server.Start();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    public void Dispose() => _server.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Fact]
    public void The_socket_is_private_to_its_owner()
    {
        // Whoever can connect controls the VM: the default mode lets only the owner in.
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(_path));
    }

    [Fact]
    public async Task A_second_server_on_the_same_path_is_refused_and_the_first_keeps_serving()
    {
        var second = new QmpServer(_path);
        var e = Assert.Throws<IOException>(second.Start);
        Assert.Contains("another process is listening", e.Message, StringComparison.Ordinal);
        using var client = new RawQmpClient(_path);
        Assert.NotNull((await client.ReadAsync())["QMP"]);
    }

    [Fact]
    public async Task Greeting_then_negotiation_then_commands()
    {
        using var client = new RawQmpClient(_path);
        var greeting = await client.ReadAsync();
        Assert.NotNull(greeting["QMP"]?["version"]);
        Assert.NotNull(greeting["QMP"]?["capabilities"]);

        var early = await client.CallAsync("""{"execute":"echo","arguments":{"value":1}}""");
        Assert.Equal("CommandNotFound", early["error"]?["class"]?.GetValue<string>());

        Assert.NotNull((await client.CallAsync("""{"execute":"qmp_capabilities"}"""))["return"]);
        var echo = await client.CallAsync("""{"execute":"echo","arguments":{"value":{"x":[1,2]}},"id":"abc"}""");
        Assert.Equal(2, echo["return"]?["x"]?[1]?.GetValue<int>());
        Assert.Equal("abc", echo["id"]?.GetValue<string>());
    }

    [Theory]
    [InlineData("{not json}", "GenericError", "JSON parse error")]
    [InlineData("[1,2]", "GenericError", "QMP input must be a JSON object")]
    [InlineData("""{"arguments":{}}""", "GenericError", "QMP input lacks member 'execute'")]
    [InlineData("""{"execute":"echo","arguments":5}""", "GenericError", "QMP input member 'arguments' must be an object")]
    [InlineData("""{"exec-oob":"echo"}""", "GenericError", "QMP input member 'exec-oob' is unexpected")]
    [InlineData("""{"execute":"echo","arguments":{"value":1,"extra":1}}""", "GenericError", "Parameter 'extra' is unexpected")]
    [InlineData("""{"execute":"echo","arguments":{}}""", "GenericError", "Parameter 'value' is missing")]
    [InlineData("""{"execute":"no-such-thing"}""", "CommandNotFound", "no-such-thing")]
    [InlineData("""{"execute":"fail"}""", "GenericError", "failing on purpose")]
    public async Task Bad_requests_get_an_error_and_the_connection_goes_on(string request, string errorClass, string text)
    {
        using var client = new RawQmpClient(_path);
        await client.ReadAsync();
        await client.CallAsync("""{"execute":"qmp_capabilities"}""");
        var reply = await client.CallAsync(request);
        Assert.Equal(errorClass, reply["error"]?["class"]?.GetValue<string>());
        Assert.Contains(text, reply["error"]?["desc"]?.GetValue<string>(), StringComparison.Ordinal);
        var after = await client.CallAsync("""{"execute":"echo","arguments":{"value":7}}""");
        Assert.Equal(7, after["return"]?.GetValue<int>());
    }

    [Fact]
    public async Task Events_reach_negotiated_clients()
    {
        using var client = new RawQmpClient(_path);
        await client.ReadAsync();
        await client.CallAsync("""{"execute":"qmp_capabilities"}""");
        _server.Emit("STOP");
        var evt = await client.ReadAsync();
        Assert.Equal("STOP", evt["event"]?.GetValue<string>());
        Assert.NotNull(evt["timestamp"]?["seconds"]);
    }
}

public sealed class QmpHostileClientTests : IAsyncLifetime, IDisposable
{
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-qmp-{Guid.NewGuid():N}.sock");
    private QmpServer _server = null!;

    public Task InitializeAsync()
    {
        _server = new QmpServer(_path);
        _server.Register("boom", QmpObjectType.Empty, () => throw new NullReferenceException("a handler bug"));
        _server.Start();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _server.DisposeAsync();

    public void Dispose() => _server.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Fact]
    public async Task A_message_over_the_limit_is_refused_before_it_is_buffered_and_the_connection_goes_on()
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(_path));
        using var stream = new NetworkStream(socket);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        await reader.ReadLineAsync(); // greeting
        var chunk = new byte[64 * 1024];
        Array.Fill(chunk, (byte)'x');
        try
        {
            for (var i = 0; i < 64; i++) // 4 MiB, no newline
                await stream.WriteAsync(chunk);
        }
        catch (IOException)
        {
            // The server may close the connection while we are still sending.
        }
        var reply = await reader.ReadLineAsync();
        Assert.Equal("""{"error":{"class":"GenericError","desc":"JSON token size limit exceeded"}}""", reply);
        // The rest of the oversized junk is skipped up to the next newline; then the next request is answered.
        await stream.WriteAsync("\n{\"execute\":\"qmp_capabilities\"}"u8.ToArray());
        Assert.Equal("""{"return":{}}""", await reader.ReadLineAsync());
    }

    [Fact]
    public async Task A_handler_that_throws_anything_still_gets_the_client_an_error_reply()
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(_path));
        using var stream = new NetworkStream(socket);
        using var reader = new StreamReader(stream, Encoding.UTF8);
        using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true };
        await reader.ReadLineAsync();
        await writer.WriteAsync("{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"boom\"}\n");
        await reader.ReadLineAsync();
        var reply = await reader.ReadLineAsync();
        Assert.Equal("""{"error":{"class":"GenericError","desc":"internal error in command 'boom'"}}""", reply);
    }
}
