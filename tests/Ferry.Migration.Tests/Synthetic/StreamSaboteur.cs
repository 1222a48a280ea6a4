using System.Buffers.Binary;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// Sits under a source channel and follows the record framing of what passes through it, so a test can damage the
/// first record of a chosen type on any channel: flip one payload byte, or cut the connection in the middle of it.
/// </summary>
public sealed class StreamSaboteur
{
    private int _done;

    public StreamSaboteur(RecordType target, bool truncate)
    {
        Target = target;
        Truncate = truncate;
    }

    public RecordType Target { get; }

    public bool Truncate { get; }

    /// <summary>True once the damage was done.</summary>
    public bool Struck => Volatile.Read(ref _done) != 0;

    public System.IO.Stream Wrap(System.IO.Stream inner) => new Channel(this, inner);

    private bool Claim() => Interlocked.Exchange(ref _done, 1) == 0;

    private sealed class Channel(StreamSaboteur owner, System.IO.Stream inner) : PassThroughStream(inner)
    {
        private readonly byte[] _prefix = new byte[24];
        private int _prefixLength;
        private long _skip = -1;        // bytes of header/hello left to pass; -1 = not known yet
        private readonly byte[] _frame = new byte[StreamLimits.FrameHeaderSize];
        private int _frameLength;
        private long _payloadLeft;
        private bool _strikeThisPayload;
        private bool _cut;

        public override void Write(ReadOnlySpan<byte> buffer)
        {
            if (_cut)
                throw new IOException("connection cut by the test");
            var copy = buffer.ToArray();
            for (var i = 0; i < copy.Length; i++)
            {
                if (!Step(ref copy[i]))
                {
                    Inner.Write(copy.AsSpan(0, i));
                    Inner.Flush();
                    Inner.Dispose();
                    _cut = true;
                    throw new IOException("connection cut by the test");
                }
            }
            Inner.Write(copy);
        }

        /// <summary>Advances the parser over one byte (possibly damaging it); false = cut the connection here.</summary>
        private bool Step(ref byte b)
        {
            if (_skip != 0)
            {
                if (_skip > 0)
                {
                    _skip--;
                    return true;
                }
                // Channel 0 starts with the stream header (length at bytes 12..15), the others with a 24-byte hello.
                _prefix[_prefixLength++] = b;
                if (_prefixLength == 8)
                {
                    if (_prefix.AsSpan(0, 8).SequenceEqual(ChannelHello.Magic))
                        _skip = ChannelHello.Size - 8;
                }
                else if (_prefixLength == 16)
                {
                    _skip = BinaryPrimitives.ReadUInt32LittleEndian(_prefix.AsSpan(12)) - 16;
                }
                return true;
            }
            if (_payloadLeft > 0)
            {
                if (_strikeThisPayload)
                {
                    _strikeThisPayload = false;
                    if (owner.Truncate)
                        return false;
                    b ^= 0x5A;
                }
                _payloadLeft--;
                return true;
            }
            _frame[_frameLength++] = b;
            if (_frameLength == _frame.Length)
            {
                _frameLength = 0;
                var type = (RecordType)BinaryPrimitives.ReadUInt16LittleEndian(_frame);
                _payloadLeft = BinaryPrimitives.ReadUInt32LittleEndian(_frame.AsSpan(4));
                _strikeThisPayload = type == owner.Target && _payloadLeft > 0 && owner.Claim();
            }
            return true;
        }

        public override void Flush()
        {
            if (!_cut)
                Inner.Flush();
        }
    }
}
