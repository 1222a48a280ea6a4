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

/// <summary>
/// Liveness of a migration channel: a silent partition (no reset, no close) must fail the migration within the
/// channel time-out (ferry-channel-timeout-ms), whoever is waiting. On a TCP channel the kernel does its part: TCP
/// keepalive probes an idle connection (after half the time-out, then every second or so), TCP_USER_TIMEOUT drops
/// a connection whose sent data or probes stay unacknowledged for the time-out, and a blocked send gives up after
/// it (SO_SNDTIMEO). A peer that is reachable but silent (a hung process) is caught by the keepalive messages of the
/// stream (capability keepalive) and the watchdogs that read them.
/// </summary>
public static class ChannelLiveness
{
    private const int IpProtoTcp = 6;
    private const int TcpUserTimeout = 18;

    /// <summary>
    /// Applies the channel time-out to a channel's stream: a socket's blocked send gives up after it, and a TCP
    /// socket also gets keepalive probes and TCP_USER_TIMEOUT. Other streams (an exec: command's pipes) rely on the
    /// stream's keepalive messages alone.
    /// </summary>
    public static void Apply(System.IO.Stream stream, TimeSpan timeout)
    {
        if (Transport(stream) is not NetworkStream network)
            return;
        var socket = network.Socket;
        var ms = (int)Math.Clamp(timeout.TotalMilliseconds, 1000, int.MaxValue);
        network.WriteTimeout = ms;
        if (socket.ProtocolType != ProtocolType.Tcp)
            return;
        const int probes = 5;
        socket.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.KeepAlive, true);
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveTime, Math.Max(1, ms / 2000));
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveInterval, Math.Max(1, ms / (2000 * probes)));
        socket.SetSocketOption(SocketOptionLevel.Tcp, SocketOptionName.TcpKeepAliveRetryCount, probes);
        if (OperatingSystem.IsLinux())
            socket.SetRawSocketOption(IpProtoTcp, TcpUserTimeout, BitConverter.GetBytes(ms));
    }

    /// <summary>The stream a channel's bytes travel on: under TLS, the socket's stream beneath the encryption.</summary>
    private static System.IO.Stream Transport(System.IO.Stream stream) => stream is TlsChannel tls ? tls.Transport : stream;

    /// <summary>
    /// Wakes every thread blocked on <paramref name="stream"/> without losing what was written to it: a socket is
    /// shut down (the peer still reads what was sent before), a stream that knows how to shut itself down
    /// (<see cref="IShutdownStream"/>, an exec: command) does so, any other stream is disposed. The caller disposes
    /// the stream later as usual.
    /// </summary>
    public static void Wake(System.IO.Stream stream)
    {
        try
        {
            var transport = Transport(stream);
            if (transport is NetworkStream network)
                network.Socket.Shutdown(SocketShutdown.Both);
            else if (transport is IShutdownStream shutdown)
                shutdown.Shutdown();
            else
                stream.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            // Already closed or broken: nothing blocked on it any more.
        }
    }

    /// <summary>
    /// Closes <paramref name="stream"/> abortively: the peer sees a reset, never an orderly end of stream. Postcopy
    /// tells a source that exited (its kernel closed the connections) from a broken link (which can be recovered) by
    /// that difference, so a live side that gives a connection up resets it.
    /// </summary>
    public static void Reset(System.IO.Stream stream)
    {
        try
        {
            // Under TLS the socket beneath: disposing the TLS channel closes it, abortively once lingering is off.
            switch (Transport(stream))
            {
                case NetworkStream network:
                    // The socket itself, first: disposing a NetworkStream shuts the socket down (an orderly end of
                    // stream, FIN) before closing it, whatever the linger; a close with linger 0 and nothing before
                    // it sends the reset.
                    network.Socket.LingerState = new LingerOption(true, 0);
                    network.Socket.Close();
                    break;
                case DuplexPipeStream pipe:
                    pipe.Break();
                    break;
            }
            stream.Dispose();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or SocketException)
        {
            // Already closed or broken.
        }
    }
}

/// <summary>Connecting a channel's socket, for every socket transport: the socket is the stream's or disposed, and a failure names the URI.</summary>
internal static class ChannelSockets
{
    public static async Task<System.IO.Stream> ConnectAsync(Socket socket, Action<Socket> tune, EndPoint endpoint, MigrationUri uri, CancellationToken cancel)
    {
        try
        {
            tune(socket);
            await socket.ConnectAsync(endpoint, cancel).ConfigureAwait(false);
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

public sealed class TcpChannelConnector(MigrationUri uri) : IChannelConnector
{
    private readonly MigrationUri _uri = uri.Expect(MigrationUriKind.Tcp);

    public string Description => _uri.ToString();

    public Task<System.IO.Stream> ConnectAsync(CancellationToken cancel) =>
        ChannelSockets.ConnectAsync(new Socket(SocketType.Stream, ProtocolType.Tcp), TcpTuning.Apply, new DnsEndPoint(_uri.Host, _uri.Port), _uri, cancel);
}

public sealed class TcpChannelListener : IChannelListener
{
    private readonly Socket _socket;

    public TcpChannelListener(MigrationUri uri)
    {
        uri.Expect(MigrationUriKind.Tcp);
        IPAddress[] addresses;
        try
        {
            addresses = IPAddress.TryParse(uri.Host, out var address) ? [address] : Dns.GetHostAddresses(uri.Host);
        }
        catch (SocketException e)
        {
            throw new IOException($"cannot listen on {uri}: {e.Message}", e);
        }
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
        Uri = MigrationUri.Tcp(uri.Host, bound.Port);
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
