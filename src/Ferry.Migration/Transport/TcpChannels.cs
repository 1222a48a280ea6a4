using System.Net;
using System.Net.Sockets;

namespace Ferry.Migration.Transport;

/// <summary>TCP migration channels: one connection per channel, Nagle off, large socket buffers.</summary>
internal static class TcpTuning
{
    public const int SocketBufferBytes = 4 << 20;

    public static void Apply(Socket socket)
    {
        socket.NoDelay = true;
        socket.SendBufferSize = SocketBufferBytes;
        socket.ReceiveBufferSize = SocketBufferBytes;
    }
}

public sealed class TcpChannelConnector(MigrationUri uri) : IChannelConnector
{
    public string Description => uri.ToString();

    public async Task<System.IO.Stream> ConnectAsync(CancellationToken cancel)
    {
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp);
        try
        {
            TcpTuning.Apply(socket);
            await socket.ConnectAsync(uri.Host, uri.Port, cancel).ConfigureAwait(false);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch (SocketException e)
        {
            socket.Dispose();
            throw new IOException($"cannot connect to {uri}: {e.Message}", e);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}

public sealed class TcpChannelListener : IChannelListener
{
    private readonly Socket _socket;

    public TcpChannelListener(MigrationUri uri)
    {
        var addresses = IPAddress.TryParse(uri.Host, out var address) ? [address] : Dns.GetHostAddresses(uri.Host);
        if (addresses.Length == 0)
            throw new IOException($"{uri}: host '{uri.Host}' has no address");
        _socket = new Socket(addresses[0].AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            _socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
            _socket.ReceiveBufferSize = TcpTuning.SocketBufferBytes; // inherited by accepted sockets: set before listen
            _socket.Bind(new IPEndPoint(addresses[0], uri.Port));
            _socket.Listen(64);
        }
        catch (SocketException e)
        {
            _socket.Dispose();
            throw new IOException($"cannot listen on {uri}: {e.Message}", e);
        }
        var bound = (IPEndPoint)_socket.LocalEndPoint!;
        Uri = uri with { Port = bound.Port };
    }

    /// <summary>The address listened on, with the real port when port 0 was asked for.</summary>
    public MigrationUri Uri { get; }

    public string Description => Uri.ToString();

    public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
    {
        var socket = await _socket.AcceptAsync(cancel).ConfigureAwait(false);
        TcpTuning.Apply(socket);
        return new NetworkStream(socket, ownsSocket: true);
    }

    public void Dispose() => _socket.Dispose();
}
