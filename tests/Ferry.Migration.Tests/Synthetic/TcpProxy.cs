using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// A loopback TCP proxy between a source and a destination that forwards every channel both ways, except that on
/// the first connection (channel 0) it follows the return path's framing and, when the destination's RESUMED comes
/// by, resets both connections instead of passing it on: the return path cut right after the destination resumed.
/// </summary>
public sealed class TcpProxy : IDisposable
{
    private readonly Socket _listener = new(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
    private readonly IPEndPoint _destination;
    private readonly List<Socket> _sockets = [];
    private int _connections;
    private int _cut;

    private readonly bool _cutAtResumed;
    private readonly MemoryStream? _capture;

    /// <param name="cutAtResumed">Reset the first connection when the destination's RESUMED passes (the return path must be plain to find it).</param>
    /// <param name="capture">Keep every byte sent towards the destination, for <see cref="Captured"/>.</param>
    public TcpProxy(IPEndPoint destination, bool cutAtResumed = true, bool capture = false)
    {
        _destination = destination;
        _cutAtResumed = cutAtResumed;
        _capture = capture ? new MemoryStream() : null;
        _listener.Bind(new IPEndPoint(IPAddress.Loopback, 0));
        _listener.Listen(16);
        _ = Task.Run(AcceptLoop);
    }

    public int Port => ((IPEndPoint)_listener.LocalEndPoint!).Port;

    /// <summary>Every byte the sources sent (all connections, interleaved by arrival).</summary>
    public byte[] Captured
    {
        get
        {
            lock (_capture!)
                return _capture.ToArray();
        }
    }

    /// <summary>True once a RESUMED was kept from the source.</summary>
    public bool Cut => Volatile.Read(ref _cut) != 0;

    private async Task AcceptLoop()
    {
        try
        {
            while (true)
            {
                var source = await _listener.AcceptAsync().ConfigureAwait(false);
                var destination = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
                await destination.ConnectAsync(_destination).ConfigureAwait(false);
                lock (_sockets)
                    _sockets.AddRange([source, destination]);
                var first = Interlocked.Increment(ref _connections) == 1;
                new Thread(() => Pump(source, destination, null, _capture)) { IsBackground = true }.Start();
                new Thread(() => Pump(destination, source, first && _cutAtResumed ? (source, destination) : null)) { IsBackground = true }.Start();
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // Disposed.
        }
    }

    /// <summary>Copies <paramref name="from"/> to <paramref name="to"/>; with <paramref name="returnPath"/>, reply by reply, resetting both at RESUMED.</summary>
    private void Pump(Socket from, Socket to, (Socket Source, Socket Destination)? returnPath, MemoryStream? capture = null)
    {
        try
        {
            if (returnPath is not { } ends)
            {
                var buffer = new byte[64 << 10];
                int n;
                while ((n = from.Receive(buffer)) > 0)
                {
                    if (capture is not null)
                    {
                        lock (capture)
                            capture.Write(buffer, 0, n);
                    }
                    to.Send(buffer.AsSpan(0, n));
                }
                to.Shutdown(SocketShutdown.Send);
                return;
            }
            using var stream = new NetworkStream(from, ownsSocket: false);
            var header = new byte[12];
            while (stream.ReadAtLeast(header, 12, throwOnEndOfStream: false) == 12)
            {
                var frame = new byte[12 + BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4))];
                header.CopyTo(frame, 0);
                stream.ReadExactly(frame.AsSpan(12));
                if ((ReplyType)BinaryPrimitives.ReadUInt16LittleEndian(frame) == ReplyType.Resumed)
                {
                    Interlocked.Exchange(ref _cut, 1);
                    foreach (var socket in new[] { ends.Source, ends.Destination })
                    {
                        socket.LingerState = new LingerOption(true, 0); // close = reset
                        socket.Close();
                    }
                    return;
                }
                to.Send(frame);
            }
            to.Shutdown(SocketShutdown.Send);
        }
        catch (Exception e) when (e is SocketException or IOException or ObjectDisposedException)
        {
            // One side went away; the other notices on its own.
        }
    }

    public void Dispose()
    {
        _listener.Dispose();
        lock (_sockets)
        {
            foreach (var socket in _sockets)
                socket.Dispose();
        }
    }
}
