using System.Buffers.Binary;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// Sits under the source's channels and follows the return path's framing: the destination's RESUMED never reaches
/// the source; instead the connection is reset (or, with <c>silent</c>, RESUMED is swallowed and the source just
/// hears nothing more). The return path cut right after the destination resumed the guest.
/// </summary>
public sealed class ResumedCutter(bool silent)
{
    private int _cut;

    /// <summary>True once a RESUMED was kept from the source.</summary>
    public bool Cut => Volatile.Read(ref _cut) != 0;

    public System.IO.Stream Wrap(System.IO.Stream inner) => new Channel(this, inner);

    private sealed class Channel(ResumedCutter owner, System.IO.Stream inner) : PassThroughStream(inner)
    {
        private byte[] _pending = [];
        private int _offset;

        public override int Read(Span<byte> buffer)
        {
            while (_offset == _pending.Length)
            {
                var header = new byte[12];
                if (Inner.ReadAtLeast(header, 12, throwOnEndOfStream: false) < 12)
                    return 0;
                var frame = new byte[12 + BinaryPrimitives.ReadUInt32LittleEndian(header.AsSpan(4))];
                header.CopyTo(frame, 0);
                Inner.ReadExactly(frame.AsSpan(12));
                if ((ReplyType)BinaryPrimitives.ReadUInt16LittleEndian(frame) == ReplyType.Resumed)
                {
                    Interlocked.Exchange(ref owner._cut, 1);
                    if (owner.Silent)
                        continue;
                    Inner.Dispose();
                    throw new IOException("connection reset by the test, right after the destination resumed");
                }
                (_pending, _offset) = (frame, 0);
            }
            var n = Math.Min(buffer.Length, _pending.Length - _offset);
            _pending.AsSpan(_offset, n).CopyTo(buffer);
            _offset += n;
            return n;
        }
    }

    private bool Silent => silent;
}

/// <summary>
/// A silent partition: once <see cref="Freeze"/> is called every read and write on a wrapped stream blocks, with no
/// reset and no close, until that stream is disposed (then it fails as a dead connection would).
/// </summary>
public sealed class Blackhole
{
    private volatile bool _frozen;

    public System.IO.Stream Wrap(System.IO.Stream inner) => new Channel(this, inner);

    public void Freeze() => _frozen = true;

    private sealed class Channel(Blackhole owner, System.IO.Stream inner) : PassThroughStream(inner)
    {
        private readonly CancellationTokenSource _disposed = new();

        private void Hang()
        {
            if (!owner._frozen)
                return;
            _disposed.Token.WaitHandle.WaitOne();
            throw new IOException("the partitioned connection was closed");
        }

        public override int Read(Span<byte> buffer)
        {
            Hang();
            var n = Inner.Read(buffer);
            Hang();
            return n;
        }

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            Hang();
            Inner.Write(buffer);
        }

        protected override void Dispose(bool disposing)
        {
            if (disposing)
                _disposed.Cancel();
            // Nothing crosses a partition, not even a close: the far end is left to notice the silence.
            if (!owner._frozen)
                base.Dispose(disposing);
        }
    }
}

/// <summary>A stream that hands everything to <see cref="Inner"/>; fault injectors override what they change.</summary>
public abstract class PassThroughStream(System.IO.Stream inner) : System.IO.Stream
{
    protected System.IO.Stream Inner { get; } = inner;

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer) => Inner.Read(buffer);

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer) => Inner.Write(buffer);

    public override void Flush() => Inner.Flush();

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    protected override void Dispose(bool disposing)
    {
        if (disposing)
            Inner.Dispose();
        base.Dispose(disposing);
    }
}
