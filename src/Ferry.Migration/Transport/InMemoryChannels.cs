using System.Threading.Channels;

namespace Ferry.Migration.Transport;

/// <summary>
/// In-process migration channels for tests and for engines run without a network: every connect creates a pipe
/// pair and hands the far end to the listener. Each direction is a bounded byte buffer, so a slow reader holds the
/// writer back as TCP would.
/// </summary>
public sealed class InMemoryChannels : IChannelConnector, IChannelListener
{
    private readonly Channel<System.IO.Stream> _pending = Channel.CreateUnbounded<System.IO.Stream>();
    private readonly Func<System.IO.Stream, System.IO.Stream>? _wrapSourceEnd;
    private bool _closed;

    /// <param name="wrapSourceEnd">Optional wrapper around each source-side stream (tests inject faults with it).</param>
    public InMemoryChannels(Func<System.IO.Stream, System.IO.Stream>? wrapSourceEnd = null) => _wrapSourceEnd = wrapSourceEnd;

    public string Description => "in-memory";

    /// <summary>Every stream handed out so far (source and destination ends), so a test can cut them all.</summary>
    public List<DuplexPipeStream> Ends { get; } = [];

    public Task<System.IO.Stream> ConnectAsync(CancellationToken cancel)
    {
        if (_closed)
            throw new IOException("in-memory listener is closed (connection refused)");
        var (a, b) = DuplexPipeStream.CreatePair(4 << 20);
        lock (Ends)
            Ends.AddRange([a, b]);
        _pending.Writer.TryWrite(b);
        return Task.FromResult(_wrapSourceEnd is null ? (System.IO.Stream)a : _wrapSourceEnd(a));
    }

    public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel) => await _pending.Reader.ReadAsync(cancel).ConfigureAwait(false);

    /// <summary>Breaks every connection (both directions), as a killed peer would.</summary>
    public void BreakAll()
    {
        lock (Ends)
        {
            foreach (var end in Ends)
                end.Break();
        }
    }

    public void Dispose()
    {
        _closed = true;
        _pending.Writer.TryComplete();
    }
}

/// <summary>One end of an in-memory duplex pipe.</summary>
public sealed class DuplexPipeStream : System.IO.Stream
{
    private readonly ByteQueue _incoming;
    private readonly ByteQueue _outgoing;

    private DuplexPipeStream(ByteQueue incoming, ByteQueue outgoing)
    {
        _incoming = incoming;
        _outgoing = outgoing;
    }

    public static (DuplexPipeStream A, DuplexPipeStream B) CreatePair(int capacity)
    {
        var ab = new ByteQueue(capacity);
        var ba = new ByteQueue(capacity);
        return (new DuplexPipeStream(ba, ab), new DuplexPipeStream(ab, ba));
    }

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer) => _incoming.Read(buffer);

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer) => _outgoing.Write(buffer);

    public override void Flush() { }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>Both directions fail from now on: reads and writes on either end throw, as after a reset.</summary>
    public void Break()
    {
        _incoming.Break();
        _outgoing.Break();
    }

    protected override void Dispose(bool disposing)
    {
        // Closing: the peer reads what was written, then end of stream; its writes to us fail.
        _outgoing.Complete();
        _incoming.Break();
        base.Dispose(disposing);
    }

    private sealed class ByteQueue(int capacity)
    {
        private readonly byte[] _ring = new byte[capacity];
        private int _head, _count;
        private bool _completed, _broken;

        public int Read(Span<byte> destination)
        {
            if (destination.Length == 0)
                return 0;
            lock (_ring)
            {
                while (_count == 0 && !_completed && !_broken)
                    Monitor.Wait(_ring);
                if (_broken)
                    throw new IOException("connection reset (in-memory pipe broken)");
                if (_count == 0)
                    return 0;
                var n = Math.Min(destination.Length, _count);
                var first = Math.Min(n, _ring.Length - _head);
                _ring.AsSpan(_head, first).CopyTo(destination);
                _ring.AsSpan(0, n - first).CopyTo(destination[first..]);
                _head = (_head + n) % _ring.Length;
                _count -= n;
                Monitor.PulseAll(_ring);
                return n;
            }
        }

        public void Write(ReadOnlySpan<byte> source)
        {
            while (source.Length > 0)
            {
                lock (_ring)
                {
                    while (_count == _ring.Length && !_broken)
                        Monitor.Wait(_ring);
                    if (_broken || _completed)
                        throw new IOException("connection reset (in-memory pipe closed)");
                    var n = Math.Min(source.Length, _ring.Length - _count);
                    var tail = (_head + _count) % _ring.Length;
                    var first = Math.Min(n, _ring.Length - tail);
                    source[..first].CopyTo(_ring.AsSpan(tail));
                    source[first..n].CopyTo(_ring);
                    _count += n;
                    source = source[n..];
                    Monitor.PulseAll(_ring);
                }
            }
        }

        public void Complete()
        {
            lock (_ring)
            {
                _completed = true;
                Monitor.PulseAll(_ring);
            }
        }

        public void Break()
        {
            lock (_ring)
            {
                _broken = true;
                Monitor.PulseAll(_ring);
            }
        }
    }
}
