using System.Net.Sockets;

namespace Ferry.Migration.Transport;

/// <summary>
/// `unix:PATH` channels: one Unix stream socket connection per channel, as with TCP. The listener removes a file
/// already at PATH before binding (QEMU does the same: a stale socket from an earlier run) and the socket file it
/// made when it is disposed.
/// </summary>
public sealed class UnixChannelConnector(MigrationUri uri) : IChannelConnector
{
    private readonly MigrationUri _uri = uri.Expect(MigrationUriKind.Unix);

    public string Description => _uri.ToString();

    public Task<System.IO.Stream> ConnectAsync(CancellationToken cancel) =>
        ChannelSockets.ConnectAsync(new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified),
            socket => socket.SendBufferSize = TcpTuning.SocketBufferBytes, new UnixDomainSocketEndPoint(_uri.Path), _uri, cancel);
}

public sealed class UnixChannelListener : IChannelListener
{
    private readonly Socket _socket;
    private readonly MigrationUri _uri;
    private int _disposed;

    public UnixChannelListener(MigrationUri uri)
    {
        _uri = uri.Expect(MigrationUriKind.Unix);
        if (Directory.Exists(uri.Path))
            throw new IOException($"cannot listen on {uri}: '{uri.Path}' is a directory");
        _socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            if (File.Exists(uri.Path))
                File.Delete(uri.Path);
            _socket.ReceiveBufferSize = TcpTuning.SocketBufferBytes; // inherited by accepted sockets: set before listen
            _socket.Bind(new UnixDomainSocketEndPoint(uri.Path));
            _socket.Listen(64);
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            _socket.Dispose();
            var why = e is UnauthorizedAccessException ? "permission denied" : e.Message;
            throw new IOException($"cannot listen on {uri}: {why}", e);
        }
    }

    public string Description => _uri.ToString();

    public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
    {
        var socket = await _socket.AcceptAsync(cancel).ConfigureAwait(false);
        socket.SendBufferSize = TcpTuning.SocketBufferBytes;
        return new NetworkStream(socket, ownsSocket: true);
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
            return;
        _socket.Dispose();
        try
        {
            File.Delete(_uri.Path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Someone else's file by now, or not ours to remove: leave it.
        }
    }
}
