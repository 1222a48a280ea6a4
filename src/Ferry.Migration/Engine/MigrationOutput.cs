using Ferry.Kvm;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>Where one sending thread puts a pass's records. Not thread-safe: one sink per thread.</summary>
public interface IPageSink
{
    /// <summary>Bytes handed on so far (for "transferred" and the bandwidth estimate).</summary>
    long BytesWritten { get; }

    void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages);

    void WriteZeroRun(ushort block, ulong pageOffset, uint count);

    /// <summary>The truth for every page the bitmap covers: set = in the balloon (contents not kept).</summary>
    void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap);

    /// <summary>Ends this sink's part of a pass (and pushes out what is buffered).</summary>
    void EndPass(uint pass);
}

/// <summary>
/// Where a precopy goes: a destination over channels (<see cref="ChannelOutput"/>) or a snapshot file. The engine
/// opens it, sends passes through its sinks, and completes it with the state; the output says when the other side
/// has everything.
/// </summary>
public interface IMigrationOutput : IDisposable
{
    string Description { get; }

    /// <summary>Opens the output for these blocks; returns one sink per sending thread.</summary>
    IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel);

    /// <summary>
    /// A snapshot, not a move: the guest that was running may resume as soon as <see cref="Complete"/> returns, and
    /// <see cref="Finish"/> then runs while it does. False for a migration (the guest now runs elsewhere).
    /// </summary>
    bool SourceRunsOn { get; }

    /// <summary>
    /// Writes the state, ends every sink and waits until the other side holds everything the guest needs (or
    /// throws). The guest is paused throughout, so this is the part of the downtime the output controls.
    /// </summary>
    void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout);

    /// <summary>
    /// Makes what <see cref="Complete"/> handed over final (a file: synced and marked complete); the migration only
    /// counts as completed after it. Runs after the guest resumed when <see cref="SourceRunsOn"/>.
    /// </summary>
    void Finish();

    /// <summary>
    /// After a live pass: returns once the other side has loaded everything up to that pass's end (the guest runs
    /// meanwhile), so no backlog of buffered pages is left to load inside the downtime. Outputs that write
    /// synchronously return at once.
    /// </summary>
    void WaitUntilLoaded(int pass, TimeSpan timeout) { }

    /// <summary>Breaks off (cancel or failure). <paramref name="keepControl"/> leaves the channel a reason may come back on.</summary>
    void Abort(bool keepControl);

    /// <summary>After a failure: the other side's reason for giving up, if it sent one (waits briefly).</summary>
    string? RemoteFailure();
}

/// <summary>
/// The network output: N channels from a connector, the stream header with capabilities and session id on channel
/// 0, a hello on the others, and the destination's replies (ACCEPT, RESUMED, FAILED) on channel 0.
/// </summary>
public sealed class ChannelOutput(IChannelConnector connector, int channelCount) : IMigrationOutput
{
    private const int ChannelBufferBytes = 1 << 20;
    private Channel[] _channels = [];

    public string Description => connector.Description;

    public IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel)
    {
        if (blocks.Count is 0 or > StreamHeader.MaxBlocks)
            throw new MigrationException(MigrationErrorKind.OutputFailed, $"{blocks.Count} RAM blocks (1..{StreamHeader.MaxBlocks} can migrate)");
        _channels = new Channel[channelCount];
        var sessionId = (ulong)Random.Shared.NextInt64();
        const StreamCapabilities capabilities = StreamCapabilities.All;
        var header = new StreamHeader((ulong)capabilities, channelCount, [.. blocks.Select(b => new BlockDescriptor(b.Name, b.Size))], sessionId);
        for (var i = 0; i < channelCount; i++)
        {
            var stream = connector.ConnectAsync(cancel).WaitAsync(TimeSpan.FromSeconds(10), cancel).GetAwaiter().GetResult();
            _channels[i] = new Channel(stream, ChannelBufferBytes);
            if (i == 0)
            {
                _channels[0].Writer.WriteHeader(header);
                _channels[0].Writer.Flush();
                var reply = ReadReply(TimeSpan.FromSeconds(10), "the destination to accept the stream");
                if (reply.Type != ReplyType.Accept)
                    throw new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination refused the migration: {reply.Message}");
                if (((StreamCapabilities)reply.Capabilities & ~capabilities) != 0)
                    throw new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination accepted capabilities 0x{reply.Capabilities:X} that were not offered");
                _passAcks = ((StreamCapabilities)reply.Capabilities).HasFlag(StreamCapabilities.PassAcks);
            }
            else
            {
                // Flushed at once: the destination reads no channel until every channel has said hello.
                _channels[i].Buffered.Write(ChannelHello.Encode(sessionId, i));
                _channels[i].Buffered.Flush();
            }
        }
        return _channels;
    }

    public bool SourceRunsOn => false;

    /// <summary>The destination accepted pass-acks: it says PASS_LOADED after each pass.</summary>
    private bool _passAcks;

    /// <summary>The highest pass the destination said it has loaded.</summary>
    private long _loadedPass;

    public void WaitUntilLoaded(int pass, TimeSpan timeout)
    {
        if (!_passAcks)
            return;
        var deadline = DateTime.UtcNow + timeout;
        while (_loadedPass < pass)
        {
            var left = deadline - DateTime.UtcNow;
            if (left <= TimeSpan.Zero)
                throw new MigrationException(MigrationErrorKind.Timeout, $"the destination had not loaded pass {pass} after {timeout.TotalMilliseconds:F0} ms");
            var reply = ReadReply(left, $"the destination to load pass {pass}", stopAtPassLoaded: true);
            if (reply.Type == ReplyType.Failed)
                throw new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination failed: {reply.Message}");
            if (reply.Type != ReplyType.PassLoaded)
                throw new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination sent {reply.Type} while loading pass {pass}");
        }
    }

    /// <summary>Nothing left: RESUMED, which <see cref="Complete"/> waits for, already means the destination runs it all.</summary>
    public void Finish() { }

    public void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout)
    {
        var control = _channels[0].Writer;
        foreach (var section in state)
            control.WriteState(section.Kind, section.Index, section.Name, section.Blob);
        foreach (var channel in _channels)
        {
            channel.Writer.WriteEnd();
            channel.Writer.Flush();
        }
        var reply = ReadReply(timeout, "the guest running on the destination");
        if (reply.Type != ReplyType.Resumed)
            throw new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination failed to load the VM: {reply.Message}");
    }

    public void Abort(bool keepControl)
    {
        // Channels still being connected are null.
        foreach (var channel in keepControl ? _channels.Skip(1) : _channels)
            channel?.Abort();
    }

    public string? RemoteFailure()
    {
        if (_channels.Length == 0 || _channels[0] is null)
            return null;
        try
        {
            var reply = ReadReply(TimeSpan.FromMilliseconds(500), "a reason");
            return reply.Type == ReplyType.Failed ? reply.Message : null;
        }
        catch (Exception)
        {
            return null; // No reason available.
        }
    }

    /// <summary>
    /// The next reply other than PASS_LOADED, which only moves <see cref="_loadedPass"/> on (unless
    /// <paramref name="stopAtPassLoaded"/>, for the one caller waiting for it).
    /// </summary>
    private Reply ReadReply(TimeSpan timeout, string waitingFor, bool stopAtPassLoaded = false)
    {
        var stream = _channels[0].Stream;
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var read = Task.Run(() => ReturnPath.Read(stream));
            var left = deadline - DateTime.UtcNow;
            if (left < TimeSpan.Zero || !read.Wait(left))
            {
                _channels[0].Abort();
                throw new MigrationException(MigrationErrorKind.Timeout, $"timed out after {timeout.TotalMilliseconds:F0} ms waiting for {waitingFor}");
            }
            var reply = read.GetAwaiter().GetResult();
            if (reply.Type != ReplyType.PassLoaded)
                return reply;
            if (!_passAcks || (long)reply.Capabilities <= _loadedPass)
                throw new StreamFormatException($"the destination said pass {reply.Capabilities} was loaded after pass {_loadedPass}{(_passAcks ? "" : " (pass-acks were not accepted)")}");
            _loadedPass = (long)reply.Capabilities;
            if (stopAtPassLoaded)
                return reply;
        }
    }

    public void Dispose() => Abort(keepControl: false);

    /// <summary>One channel's stream, its buffer and its record writer; the sink of one sending thread.</summary>
    private sealed class Channel : IPageSink
    {
        public Channel(System.IO.Stream stream, int bufferBytes)
        {
            Stream = stream;
            Buffered = new BufferedStream(stream, bufferBytes);
            Writer = new RecordWriter(Buffered);
        }

        public System.IO.Stream Stream { get; }
        public BufferedStream Buffered { get; }
        public RecordWriter Writer { get; }

        public long BytesWritten => Writer.BytesWritten;

        public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages) => Writer.WritePages(block, pageOffset, pages);

        public void WriteZeroRun(ushort block, ulong pageOffset, uint count) => Writer.WriteZeroRun(block, pageOffset, count);

        public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) => Writer.WriteBalloonBitmap(block, firstPage, bitmap);

        public void EndPass(uint pass)
        {
            Writer.WritePassEnd(pass);
            Writer.Flush();
        }

        public void Abort()
        {
            try
            {
                Stream.Dispose();
            }
            catch (IOException)
            {
                // Already broken.
            }
        }
    }
}
