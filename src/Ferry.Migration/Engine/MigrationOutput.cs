using System.Diagnostics;
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

    /// <summary>A chunk's digest for the other side to compare (only outputs whose <see cref="IMigrationOutput.Verifies"/> is true).</summary>
    void WriteDigest(ushort block, uint chunk, uint digest, ReadOnlySpan<byte> excluded) =>
        throw new NotSupportedException($"{GetType().Name} does not carry memory digests");
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

    /// <summary>
    /// True once the point of no return is passed: <see cref="Complete"/> has handed over everything the other side
    /// needs to run the guest (a destination may be running it now), so a failure after this must not resume the
    /// source guest unless the other side said it failed (<see cref="RemoteFailure"/>). False for outputs whose
    /// copy never runs on its own (a snapshot file).
    /// </summary>
    bool HandedOver => false;

    /// <summary>
    /// After <see cref="Open"/>: the other side compares memory digests after the last pass (capability
    /// ferry-verify, accepted by the destination). False for a snapshot file, whose every page has its own CRC.
    /// </summary>
    bool Verifies => false;

    /// <summary>Why the channel the other side answers on ended, other than its FAILED (null: it did not, or there is none).</summary>
    Exception? ReturnPathFailure => null;

    /// <summary>Breaks off (cancel or failure). <paramref name="keepControl"/> leaves the channel a reason may come back on.</summary>
    void Abort(bool keepControl);

    /// <summary>After a failure: the other side's reason for giving up, if it sent one (waits briefly).</summary>
    string? RemoteFailure();
}

/// <summary>
/// The network output: N channels from a connector, the stream header with capabilities and session id on channel
/// 0, a hello on the others, and the destination's replies (ACCEPT, PASS_LOADED, RESUMED, FAILED, KEEPALIVE) on
/// channel 0, read by a thread of their own from the header on. A FAILED reply, a broken return path or (with the
/// keepalive capability) a destination silent for the channel time-out aborts every channel at once, so no sender
/// or wait is left blocked; the engine then reports the destination's reason when it sent one.
/// </summary>
public sealed partial class ChannelOutput(IChannelConnector connector, MigrationParameters parameters, MigrationCapabilities capabilities) : IMigrationOutput
{
    private const int ChannelBufferBytes = 1 << 20;
    private readonly int _channelCount = parameters.ChannelsFor(capabilities);
    private readonly TimeSpan _timeout = TimeSpan.FromMilliseconds(parameters.ChannelTimeoutMs);
    private readonly object _gate = new();            // the reply state below
    private readonly Queue<Reply> _replies = new();   // ACCEPT and RESUMED, in order
    private Channel[] _channels = [];
    private string? _remoteFailure;                   // FAILED's reason
    private Exception? _returnPathError;              // why the return path ended otherwise
    private bool _returnPathEnded;
    private long _lastHeard;                          // Stopwatch timestamp of the last reply of any kind
    private bool _keepAlive;                          // the destination accepted the keepalive capability
    private Timer? _heartbeat;
    private long _lastControlBytes = -1;
    private volatile bool _handedOver;
    private bool _verifies;

    public string Description => connector.Description;

    public bool Verifies => _verifies;

    public bool HandedOver => _handedOver || _postcopySwitched;

    public Exception? ReturnPathFailure
    {
        get
        {
            lock (_gate)
                return _returnPathError;
        }
    }

    public IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel)
    {
        if (blocks.Count is 0 or > StreamHeader.MaxBlocks)
            throw new MigrationException(MigrationErrorKind.OutputFailed, $"{blocks.Count} RAM blocks (1..{StreamHeader.MaxBlocks} can migrate)");
        _channels = new Channel[_channelCount];
        var sessionId = _sessionId = ResumeSession ?? (ulong)Random.Shared.NextInt64();
        var offered = OfferedCapabilities();
        var header = new StreamHeader((ulong)offered, _channelCount, [.. blocks.Select(b => new BlockDescriptor(b.Name, b.Size))], sessionId);
        for (var i = 0; i < _channelCount; i++)
        {
            var stream = connector.ConnectAsync(cancel).WaitAsync(TimeSpan.FromSeconds(10), cancel).GetAwaiter().GetResult();
            ChannelLiveness.Apply(stream, _timeout);
            _channels[i] = new Channel(stream, ChannelBufferBytes);
            if (i == 0)
            {
                _channels[0].Writer.WriteHeader(header);
                _channels[0].Writer.Flush();
                _lastHeard = Stopwatch.GetTimestamp();
                new Thread(ReadReturnPath) { Name = "migration-return-path", IsBackground = true }.Start();
                var reply = WaitReply(TimeSpan.FromSeconds(10), "the destination to accept the stream", refused: true);
                if (reply.Type != ReplyType.Accept)
                    throw new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination sent {reply.Type} instead of accepting the stream");
                var accepted = (StreamCapabilities)reply.Capabilities;
                if ((accepted & ~offered) != 0)
                    throw new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination accepted capabilities 0x{reply.Capabilities:X} that were not offered");
                if (capabilities.Verify && !accepted.HasFlag(StreamCapabilities.Verify))
                    throw new MigrationException(MigrationErrorKind.DestinationRefused, "the destination does not verify migrated memory (capability ferry-verify); migrate without it or update the destination");
                _verifies = accepted.HasFlag(StreamCapabilities.Verify);
                CheckPostcopyAccepted(accepted);
                if (accepted.HasFlag(StreamCapabilities.KeepAlive))
                    _heartbeat = new Timer(_ => Heartbeat(), null, _timeout / 4, _timeout / 4);
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
        WaitFor(() => _loadedPass >= pass, timeout, $"the destination to load pass {pass}");
    }

    /// <summary>Nothing left: RESUMED, which <see cref="Complete"/> waits for, already means the destination runs it all.</summary>
    public void Finish() { }

    public void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout)
    {
        var control = _channels[0];
        lock (control.Gate)
        {
            foreach (var section in state)
                control.Writer.WriteState(section.Kind, section.Index, section.Name, section.Blob);
        }
        foreach (var channel in _channels)
        {
            lock (channel.Gate)
            {
                channel.Writer.WriteEnd();
                channel.Writer.Flush();
            }
        }
        // The point of no return: every channel's END is out, so the destination may load it all and run the guest.
        _handedOver = true;
        var reply = WaitReply(timeout, "the guest running on the destination");
        if (reply.Type != ReplyType.Resumed)
            throw new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination sent {reply.Type} instead of RESUMED");
    }

    public void Abort(bool keepControl)
    {
        // Channels still being connected are null.
        foreach (var channel in keepControl ? _channels.Skip(1) : _channels)
            channel?.Abort();
    }

    public string? RemoteFailure()
    {
        // The return path is read all along: a destination that gave up wrote its reason before closing, so it is
        // here already or arrives within moments.
        var deadline = Stopwatch.GetTimestamp() + Stopwatch.Frequency;
        lock (_gate)
        {
            while (_remoteFailure is null && !_returnPathEnded && _channels.Length > 0 && _channels[0] is not null)
            {
                var left = deadline - Stopwatch.GetTimestamp();
                if (left <= 0 || !Monitor.Wait(_gate, TimeSpan.FromSeconds((double)left / Stopwatch.Frequency)))
                    break;
            }
            return _remoteFailure;
        }
    }

    /// <summary>The return path's reader: every reply, from the header until the destination closes or fails.</summary>
    private void ReadReturnPath()
    {
        var stream = _channels[0].Stream;
        try
        {
            while (true)
            {
                var reply = ReturnPath.Read(stream);
                lock (_gate)
                {
                    _lastHeard = Stopwatch.GetTimestamp();
                    switch (reply.Type)
                    {
                        case ReplyType.Accept:
                            _passAcks = ((StreamCapabilities)reply.Capabilities).HasFlag(StreamCapabilities.PassAcks);
                            _keepAlive = ((StreamCapabilities)reply.Capabilities).HasFlag(StreamCapabilities.KeepAlive);
                            _replies.Enqueue(reply);
                            break;
                        case ReplyType.KeepAlive:
                            if (!_keepAlive)
                                throw new StreamFormatException("the destination sent KEEPALIVE, which was not negotiated");
                            break;
                        case ReplyType.PassLoaded:
                            if (!_passAcks || (long)reply.Capabilities <= _loadedPass)
                                throw new StreamFormatException($"the destination said pass {reply.Capabilities} was loaded after pass {_loadedPass}{(_passAcks ? "" : " (pass-acks were not accepted)")}");
                            _loadedPass = (long)reply.Capabilities;
                            break;
                        case ReplyType.Failed:
                            _remoteFailure = reply.Message.Length > 0 ? reply.Message : "no reason given";
                            break;
                        default:
                            _replies.Enqueue(reply);
                            break;
                    }
                    Monitor.PulseAll(_gate);
                    if (reply.Type == ReplyType.Failed)
                        break;
                }
            }
        }
        catch (Exception e)
        {
            lock (_gate)
            {
                _returnPathError ??= e;
                Monitor.PulseAll(_gate);
            }
        }
        lock (_gate)
        {
            _returnPathEnded = true;
            Monitor.PulseAll(_gate);
        }
        // Whatever ended the return path ends the migration (or follows its end): wake every sender.
        Abort(keepControl: false);
    }

    /// <summary>Every quarter time-out: a KEEPALIVE on channel 0 if it sent nothing since; and a destination silent for the whole time-out is given up.</summary>
    private void Heartbeat()
    {
        lock (_gate)
        {
            if (_returnPathEnded)
                return;
            if (Stopwatch.GetElapsedTime(_lastHeard) >= _timeout)
            {
                _returnPathError ??= new TimeoutException($"no reply or keepalive from the destination for {_timeout.TotalMilliseconds:F0} ms");
                Monitor.PulseAll(_gate);
            }
        }
        if (_returnPathError is TimeoutException)
        {
            Abort(keepControl: false);
            return;
        }
        var control = _channels[0];
        // After END nothing more goes on channel 0; a sender holding the channel is writing, which says enough.
        if (_handedOver || !Monitor.TryEnter(control.Gate))
            return;
        try
        {
            if (control.Writer.BytesWritten == _lastControlBytes)
                control.Writer.WriteKeepAlive();
            // Records a slow sender left in the buffer count as a sign of life only once they leave it.
            control.Writer.Flush();
            _lastControlBytes = control.Writer.BytesWritten;
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
        {
            // The channel broke: the sender or the return path reports it.
        }
        finally
        {
            Monitor.Exit(control.Gate);
        }
    }

    /// <summary>The next ACCEPT or RESUMED; throws the destination's reason, the return path's failure or a time-out.</summary>
    private Reply WaitReply(TimeSpan timeout, string waitingFor, bool refused = false)
    {
        Reply reply = default;
        WaitFor(() => _replies.TryDequeue(out reply), timeout, waitingFor, refused);
        return reply;
    }

    private void WaitFor(Func<bool> done, TimeSpan timeout, string waitingFor, bool refused = false)
    {
        var deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
        lock (_gate)
        {
            while (!done())
            {
                if (_remoteFailure is { } reason)
                    throw refused
                        ? new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination refused the migration: {reason}")
                        : new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination failed: {reason}");
                if (_returnPathError is { } error)
                    throw error switch
                    {
                        MigrationException => error,
                        StreamFormatException => new MigrationException(MigrationErrorKind.InvalidStream, error.Message, error),
                        TimeoutException => new MigrationException(MigrationErrorKind.Timeout, error.Message, error),
                        _ => new MigrationException(MigrationErrorKind.ChannelFailed, $"the connection to the destination broke while waiting for {waitingFor}: {error.Message}", error),
                    };
                if (_returnPathEnded)
                    throw new MigrationException(MigrationErrorKind.ChannelFailed, $"the destination closed the connection while this side waited for {waitingFor}");
                var left = deadline - Stopwatch.GetTimestamp();
                if (left <= 0)
                {
                    _channels[0].Abort();
                    throw new MigrationException(MigrationErrorKind.Timeout, $"timed out after {timeout.TotalMilliseconds:F0} ms waiting for {waitingFor}");
                }
                Monitor.Wait(_gate, TimeSpan.FromSeconds(Math.Min((double)left / Stopwatch.Frequency, 1)));
            }
        }
    }

    public void Dispose()
    {
        _heartbeat?.Dispose();
        Abort(keepControl: false);
    }

    /// <summary>
    /// One channel's stream, its buffer and its record writer; the sink of one sending thread. Each record is
    /// written under the channel's lock, so channel 0's keepalives fall between records.
    /// </summary>
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

        /// <summary>Held while a record is written, so records from two threads never interleave.</summary>
        public object Gate { get; } = new();
        public RecordWriter Writer { get; }

        public long BytesWritten => Writer.BytesWritten;

        public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages)
        {
            lock (Gate)
                Writer.WritePages(block, pageOffset, pages);
        }

        public void WriteZeroRun(ushort block, ulong pageOffset, uint count)
        {
            lock (Gate)
                Writer.WriteZeroRun(block, pageOffset, count);
        }

        public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap)
        {
            lock (Gate)
                Writer.WriteBalloonBitmap(block, firstPage, bitmap);
        }

        public void EndPass(uint pass)
        {
            lock (Gate)
            {
                Writer.WritePassEnd(pass);
                Writer.Flush();
            }
        }

        public void WriteDigest(ushort block, uint chunk, uint digest, ReadOnlySpan<byte> excluded)
        {
            lock (Gate)
                Writer.WriteDigest(block, chunk, digest, excluded);
        }

        /// <summary>Abort resets the connection instead of closing it (postcopy: see <see cref="ChannelLiveness.Reset"/>).</summary>
        public bool ResetOnAbort { get; set; }

        public void Abort()
        {
            try
            {
                if (ResetOnAbort)
                    ChannelLiveness.Reset(Stream);
                Stream.Dispose();
            }
            catch (IOException)
            {
                // Already broken.
            }
        }
    }
}
