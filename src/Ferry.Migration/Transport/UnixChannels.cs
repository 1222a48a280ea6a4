using System.Net.Sockets;
using Ferry.Interop;

namespace Ferry.Migration.Transport;

/// <summary>
/// `unix:PATH` channels: one Unix stream socket connection per channel, as with TCP. The listener replaces only a
/// stale socket file at PATH (QEMU removes whatever is there) and removes the socket file it made when disposed.
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

    /// <summary>
    /// Listens on the URI's path through <see cref="UnixListener"/>: the socket is private to its owner (whoever
    /// connects can hand this VM a guest), a socket file left by a process that is gone is replaced, and a path
    /// that something still listens on or that is not a socket is refused untouched.
    /// </summary>
    public UnixChannelListener(MigrationUri uri)
    {
        _uri = uri.Expect(MigrationUriKind.Unix);
        _socket = UnixListener.Listen(uri.Path, UnixListener.PrivateMode, backlog: 64);
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
            // Not ours to remove any more: leave it.
        }
    }
}
