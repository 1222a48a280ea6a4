using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// The source's postcopy phase (docs/migration.md, Postcopy). The guest is paused here for good; the destination
/// runs it and is owed the pages of <see cref="_owed"/>. Two ways out of the owed set, each taking a page with one
/// atomic operation, so every page is sent once: the background stream (one thread per bulk channel, taking 2 MiB
/// chunks in turn) and the urgent channel (the destination's page requests, answered on their own connection, so
/// they never queue behind bulk pages; a request for a page already taken is dropped, the page is on its way).
/// When a connection breaks, the migration is postcopy-paused: nothing the source holds is lost (its memory and
/// the pages never taken), until <see cref="Resume"/> reconnects; the destination then says which pages it still
/// needs, and that becomes the owed set (so a page lost in flight is sent again). It never resumes the guest here
/// once the destination may run it.
/// </summary>
internal sealed class PostcopySource
{
    /// <summary>
    /// The background's longest record, in pages (64 KiB): a page it took waits for its record's turn at the
    /// bandwidth limiter, and a request for it is not answered (it is on its way), so records stay short.
    /// </summary>
    private const int BackgroundRunPages = 16;

    private readonly IMigrationSource _source;
    private readonly ChannelOutput _firstOutput;
    private readonly IReadOnlyList<IPageSink> _firstSinks;
    private readonly PageScanner _scanner;
    private readonly PageScanner _urgentScanner = new(new BandwidthLimiter(0)); // a faulting vCPU waits for these
    private readonly MigrationCounters _counters;
    private readonly MigrationParameters _parameters;
    private readonly MigrationCapabilities _capabilities;
    private readonly MigrationStateMachine _state;
    private readonly Stopwatch _clock;
    private readonly BlockDescriptor[] _blocks;
    private readonly object _gate = new();   // the paused state, the links, the destination's messages below
    private readonly List<Link> _links = [];

    private PageSet[] _owed = [];        // not yet taken for sending
    private PageSet[] _original = [];    // owed at the switch: what a recovering destination may say it needs
    private long _owedAtSwitch, _firstBytesAtSwitch;
    private Link? _link;
    private long _requests, _urgentPages, _backgroundPages, _requestsForSent, _nextChunk;
    private int _recoveries;
    private TimeSpan _switchAt, _pausedTotal;
    private TimeSpan? _pausedSince, _endAt;
    private string? _pausedBecause;
    private IChannelConnector? _resumeWith;
    private bool _abandoned;
    private PostcopyDoneMessage? _done;

    public PostcopySource(IMigrationSource source, ChannelOutput output, IReadOnlyList<IPageSink> sinks, PageScanner scanner, MigrationCounters counters,
        MigrationParameters parameters, MigrationCapabilities capabilities, MigrationStateMachine state, Stopwatch clock)
    {
        _source = source;
        _firstOutput = output;
        _firstSinks = sinks;
        _scanner = scanner;
        _counters = counters;
        _parameters = parameters;
        _capabilities = capabilities;
        _state = state;
        _clock = clock;
        _blocks = [.. source.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size))];
    }

    /// <summary>When the destination said the guest runs there (the end of the downtime), on the migration's clock.</summary>
    public TimeSpan? RunningAt { get; private set; }

    private TimeSpan ChannelTimeout => TimeSpan.FromMilliseconds(_parameters.ChannelTimeoutMs);

    /// <summary>Connects the urgent channel of the first connection (before the guest is paused).</summary>
    public void ConnectUrgent(CancellationToken cancel)
    {
        var link = new Link(this, _firstOutput, _firstSinks, ownsOutput: false);
        UrgentLink.Connect(_firstOutput.Connector, _firstOutput.SessionId, ChannelTimeout, link, cancel);
        lock (_gate)
        {
            _link = link;
            _links.Add(link);
        }
    }

    /// <summary>
    /// Hands the guest over and serves the destination until it has every owed page. Throws a
    /// <see cref="MigrationException"/> when the destination failed before running the guest (the caller resumes it
    /// here), or when a paused migration is abandoned (the guest stays paused).
    /// </summary>
    public void Run(PageSet[] owed, ulong owedPages, IReadOnlyList<StateSection> state, TimeSpan pauseStart)
    {
        _owed = owed;
        _original = [.. owed.Select(s => s.Clone())];
        _owedAtSwitch = (long)owedPages;
        _firstBytesAtSwitch = _firstSinks.Sum(s => s.BytesWritten);
        _switchAt = pauseStart;
        var link = _link!;
        link.Output.StartPostcopy(owed, owedPages, state);
        while (!Serve(link))
        {
            // Before the destination ran the guest, its own FAILED means it never will: the caller resumes it here.
            if (RunningAt is null && _recoveries == 0 && link.Output.RemoteFailure() is { } remote)
                throw new MigrationException(MigrationErrorKind.DestinationFailed, $"the destination failed: {remote}");
            link = Paused(Reason(link));
        }
        lock (_gate)
            _endAt = _clock.Elapsed;
    }

    /// <summary>Closes every urgent channel and reconnected output (the first output is the caller's).</summary>
    public void Close()
    {
        lock (_gate)
        {
            foreach (var link in _links)
                link.Dispose();
        }
    }

    /// <summary>
    /// The words of a link's failure: what the destination sent or did when that ended it (a refused message, a
    /// silence), else the return path's own failure (the senders only saw its echo).
    /// </summary>
    private static string Reason(Link link)
    {
        var failure = link.Failure ?? new IOException("the connection ended");
        // The return path's reader notices its end on its own thread: give it the moment it needs (at most 1 s).
        _ = link.Output.RemoteFailure();
        if (failure is not (StreamFormatException or TimeoutException or MigrationException) && link.Output.ReturnPathFailure is { } returnPath)
            failure = returnPath;
        var (kind, text) = PrecopyMigration.Describe(failure, null);
        // Which sender saw the break first is a race; whichever it was, the user needs to know which peer was lost.
        return kind == MigrationErrorKind.ChannelFailed ? $"lost the connection to the destination: {text}" : text;
    }

    /// <summary>Runs one connection until the destination has every page (true) or the connection fails (false).</summary>
    private bool Serve(Link link)
    {
        Interlocked.Exchange(ref _nextChunk, 0);
        var token = link.Cancel.Token;
        var errors = WorkerThreads.Run(link.Sinks.Count, "postcopy-send", channel => SendBackground(link, channel, token), failed: e => link.Fail(e));
        if (link.Failure is not null || errors.FirstOrDefault(e => e is not null) is { } error && link.Fail(error))
            return false;
        try
        {
            // Every owed page was taken (by the background or for a request). An urgent answer in progress holds the
            // urgent gate, so END follows the last of them.
            link.Urgent!.WriteEnd();
            link.Output.EndPostcopy();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
        {
            link.Fail(e);
            return false;
        }
        var deadline = Stopwatch.GetTimestamp() + (long)(_parameters.SwitchoverTimeoutMs / 1000.0 * Stopwatch.Frequency);
        lock (_gate)
        {
            while (_done is null && link.Failure is null)
            {
                if (link.Output.ReturnPathFailure is { } returnPath)
                {
                    link.Fail(returnPath);
                    break;
                }
                var left = deadline - Stopwatch.GetTimestamp();
                if (left <= 0)
                {
                    link.Fail(new TimeoutException($"the destination did not confirm it has every page within {_parameters.SwitchoverTimeoutMs} ms of the last one"));
                    break;
                }
                Monitor.Wait(_gate, TimeSpan.FromMilliseconds(100));
            }
            return _done is not null;
        }
    }

    /// <summary>One bulk channel's share of the background: 2 MiB chunks taken in turn by every channel (the source is paused, so order no longer matters).</summary>
    private void SendBackground(Link link, int channel, CancellationToken token)
    {
        var sink = link.Sinks[channel];
        var blocks = _source.Blocks;
        while (true)
        {
            token.ThrowIfCancellationRequested();
            var global = Interlocked.Increment(ref _nextChunk) - 1;
            var b = 0;
            while (b < blocks.Count && global >= (long)Page.ChunksFor(blocks[b].PageCount))
                global -= (long)Page.ChunksFor(blocks[b++].PageCount);
            if (b == blocks.Count)
                return;
            var sent = _scanner.ScanChunk(_owed[b], blocks[b], (ushort)b, global, sink, token, BackgroundRunPages);
            if (sent.DataPages + sent.ZeroPages == 0)
                continue;
            _counters.AddSent(sent.DataPages, sent.ZeroPages);
            Interlocked.Add(ref _backgroundPages, sent.DataPages + sent.ZeroPages);
            // Pages taken are no longer sent for a request: they must not sit in a buffer while a vCPU waits for them.
            link.Output.Flush(channel);
        }
    }

    /// <summary>A message from the destination on a link's urgent channel (its reader thread).</summary>
    private void OnReply(Link link, Reply reply)
    {
        switch (reply.Type)
        {
            case ReplyType.PageRequest:
                Answer(link, PostcopyMessages.ReadRequest(reply, _blocks));
                break;
            case ReplyType.PostcopyRunning:
                lock (_gate)
                {
                    if (RunningAt is not null || _recoveries > 0)
                        throw new StreamFormatException("the destination said twice that the guest runs there");
                    RunningAt = _clock.Elapsed;
                }
                break;
            case ReplyType.NeededPages:
            {
                var part = PostcopyMessages.ReadNeeded(reply, _blocks);
                lock (_gate)
                {
                    if (link.Needed is null || link.NeededTotal is not null)
                        throw new StreamFormatException("the destination sent a needed-pages bitmap outside a recovery");
                    var needed = link.Needed[part.Block];
                    foreach (var run in PageSet.RunsIn(part.Bitmap, part.FirstPage))
                    {
                        for (var p = run.Start; p < run.End; p++)
                        {
                            if (!_original[part.Block].Contains(p))
                                throw new StreamFormatException($"the destination says it needs page {p} of block '{_blocks[part.Block].Name}', which it was never owed");
                        }
                        needed.AddRange(run.Start, run.Length);
                    }
                }
                break;
            }
            case ReplyType.NeededEnd:
            {
                var total = PostcopyMessages.ReadNeededEnd(reply);
                lock (_gate)
                {
                    if (link.Needed is null || link.NeededTotal is not null)
                        throw new StreamFormatException("the destination ended a needed-pages bitmap outside a recovery");
                    var counted = link.Needed.Aggregate(0UL, (sum, set) => sum + set.Count());
                    if (counted != total)
                        throw new StreamFormatException($"the destination says it needs {total} pages but its bitmap holds {counted}");
                    // Whatever was in flight when the connection broke is sent again; what arrived is not. Replaced
                    // here, before the requests that follow on this channel are read.
                    for (var b = 0; b < _owed.Length; b++)
                        _owed[b].CopyFrom(link.Needed[b]);
                    link.NeededTotal = total;
                    Monitor.PulseAll(_gate);
                }
                break;
            }
            case ReplyType.PostcopyDone:
            {
                var done = PostcopyMessages.ReadDone(reply);
                lock (_gate)
                {
                    if (!link.Urgent!.Ended)
                        throw new StreamFormatException("the destination said it has every page before the source sent them all");
                    _done = done;
                    Monitor.PulseAll(_gate);
                }
                break;
            }
            default:
                throw new StreamFormatException($"the destination sent {reply.Type} on the urgent channel");
        }
    }

    /// <summary>Sends the requested pages that are still owed, on the urgent channel, at once; the rest are on their way already.</summary>
    private void Answer(Link link, PageRequest request)
    {
        Interlocked.Increment(ref _requests);
        var urgent = link.Urgent!;
        var block = _source.Blocks[request.Block];
        lock (urgent.Gate)
        {
            if (urgent.Ended)
                return;
            var runs = new Runs();
            var taken = _owed[request.Block].RemoveRange(request.FirstPage, request.Count, ref runs, static (ref Runs r, ulong first, ulong count) => r.Add(first, count));
            if (taken == 0)
            {
                Interlocked.Increment(ref _requestsForSent);
                return;
            }
            for (var i = 0; i < runs.Count; i++)
            {
                var sent = _urgentScanner.ScanRun(block, (ushort)request.Block, runs.Start(i), runs.Length(i), urgent, link.Cancel.Token);
                _counters.AddSent(sent.DataPages, sent.ZeroPages);
            }
            urgent.Flush();
            Interlocked.Add(ref _urgentPages, (long)taken);
        }
    }

    /// <summary>
    /// postcopy-paused until <see cref="Resume"/> brings a connection that works (its handshake done, the owed set
    /// replaced by what the destination needs) or <see cref="Abandon"/> gives up.
    /// </summary>
    private Link Paused(string reason)
    {
        lock (_gate)
        {
            _pausedBecause = reason;
            _pausedSince = _clock.Elapsed;
        }
        _state.MoveTo(MigrationStatus.PostcopyPaused);
        while (true)
        {
            IChannelConnector connector;
            lock (_gate)
            {
                while (_resumeWith is null && !_abandoned)
                    Monitor.Wait(_gate);
                if (_abandoned)
                    throw new MigrationException(MigrationErrorKind.ChannelFailed, $"postcopy was abandoned while paused ({_pausedBecause})");
                connector = _resumeWith!;
                _resumeWith = null;
            }
            try
            {
                var link = Reconnect(connector);
                lock (_gate)
                {
                    _pausedTotal += _clock.Elapsed - _pausedSince!.Value;
                    _pausedSince = null;
                    _recoveries++;
                }
                _state.MoveTo(MigrationStatus.PostcopyActive);
                return link;
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Still paused: another migrate with resume may try again.
                lock (_gate)
                    _pausedBecause = $"recovery through {connector.Description} failed: {PrecopyMigration.Describe(e, null).Item2}";
            }
        }
    }

    /// <summary>The recovery handshake: channels with the session id, the urgent channel, then the destination's needed pages.</summary>
    private Link Reconnect(IChannelConnector connector)
    {
        var output = new ChannelOutput(connector, _parameters, _capabilities) { ResumeSession = _firstOutput.SessionId };
        var link = new Link(this, output, [], ownsOutput: true);
        lock (_gate)
            _links.Add(link);
        try
        {
            link.Sinks = output.Open(_source.Blocks, link.Cancel.Token);
            output.ResetOnAbort();
            link.Needed = [.. _source.Blocks.Select(b => new PageSet(b.PageCount))];
            UrgentLink.Connect(connector, _firstOutput.SessionId, ChannelTimeout, link, link.Cancel.Token);
            var deadline = Stopwatch.GetTimestamp() + (long)(ChannelTimeout.TotalSeconds * Stopwatch.Frequency);
            lock (_gate)
            {
                while (link.NeededTotal is null)
                {
                    if (link.Failure is { } failure)
                        throw failure;
                    if (Stopwatch.GetTimestamp() >= deadline)
                        throw new TimeoutException($"the destination did not say which pages it needs within {ChannelTimeout.TotalMilliseconds:F0} ms");
                    Monitor.Wait(_gate, TimeSpan.FromMilliseconds(100));
                }
                _link = link;
            }
            return link;
        }
        catch
        {
            link.Fail(new IOException("recovery failed"));
            throw;
        }
    }

    /// <summary>migrate with resume: wakes a paused migration with a new connection to try.</summary>
    public void Resume(IChannelConnector connector)
    {
        lock (_gate)
        {
            if (_pausedSince is null || _abandoned)
                throw new InvalidOperationException($"the migration is not postcopy-paused ({_state.Status.ToQmp()})");
            _resumeWith = connector;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Gives up a paused migration (the guest stays paused here). Ignored unless paused.</summary>
    public void Abandon()
    {
        lock (_gate)
        {
            if (_pausedSince is null)
                return;
            _abandoned = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Bytes of the urgent channels and of reconnected outputs (the first output's sinks are counted by the caller).</summary>
    public long BytesBesidesFirstOutput
    {
        get
        {
            lock (_gate)
                return _links.Sum(l => (l.Urgent?.BytesWritten ?? 0) + (l.OwnsOutput ? l.Sinks.Sum(s => s.BytesWritten) : 0));
        }
    }

    public PostcopyStats Stats()
    {
        lock (_gate)
        {
            var now = _clock.Elapsed;
            var stats = new PostcopyStats
            {
                OwedPages = _owedAtSwitch,
                Requests = Interlocked.Read(ref _requests),
                UrgentPages = Interlocked.Read(ref _urgentPages),
                BackgroundPages = Interlocked.Read(ref _backgroundPages),
                RequestsForSentPages = Interlocked.Read(ref _requestsForSent),
                Bytes = _firstSinks.Sum(s => s.BytesWritten) - _firstBytesAtSwitch + _links.Sum(l => (l.Urgent?.BytesWritten ?? 0) + (l.OwnsOutput ? l.Sinks.Sum(s => s.BytesWritten) : 0)),
                Recoveries = _recoveries,
                ActiveMs = ((_endAt ?? now) - _switchAt).TotalMilliseconds,
                PausedMs = (_pausedTotal + (_pausedSince is { } since ? now - since : TimeSpan.Zero)).TotalMilliseconds,
                PausedBecause = _pausedBecause,
            };
            if (_done is not { } done)
                return stats;
            return stats with
            {
                DestinationFigures = true,
                Faults = (long)done.Faults,
                DuplicatePages = (long)done.DuplicatePages,
                BlocktimeMs = done.BlocktimeNs / 1e6,
                VcpuBlocktimeMs = [.. done.VcpuBlocktimeNs.Select(ns => ns / 1e6)],
                LatencyP50Us = done.LatencyP50Ns / 1e3,
                LatencyP99Us = done.LatencyP99Ns / 1e3,
                LatencyMaxUs = done.LatencyMaxNs / 1e3,
            };
        }
    }

    /// <summary>Runs of pages taken for one request (at most 256 pages, so at most 128 runs).</summary>
    private struct Runs
    {
        private ulong[]? _starts, _lengths;

        public int Count { get; private set; }

        public readonly ulong Start(int i) => _starts![i];

        public readonly ulong Length(int i) => _lengths![i];

        public void Add(ulong start, ulong length)
        {
            _starts ??= new ulong[StreamLimits.MaxPagesPerRecord / 2 + 1];
            _lengths ??= new ulong[StreamLimits.MaxPagesPerRecord / 2 + 1];
            _starts[Count] = start;
            _lengths[Count] = length;
            Count++;
        }
    }

    /// <summary>One connection of the postcopy phase: an output (its bulk channels and channel 0) and an urgent channel.</summary>
    private sealed class Link(PostcopySource owner, ChannelOutput output, IReadOnlyList<IPageSink> sinks, bool ownsOutput) : IDisposable
    {
        public ChannelOutput Output { get; } = output;
        public IReadOnlyList<IPageSink> Sinks { get; set; } = sinks;
        public bool OwnsOutput { get; } = ownsOutput;
        public UrgentLink? Urgent { get; set; }
        public CancellationTokenSource Cancel { get; } = new();
        public Exception? Failure { get; private set; }

        /// <summary>Recovery: the pages the destination says it still needs, and their count once complete.</summary>
        public PageSet[]? Needed { get; set; }
        public ulong? NeededTotal { get; set; }

        public void OnReply(Reply reply) => owner.OnReply(this, reply);

        /// <summary>The first failure ends the connection: every channel is reset, every sender and wait wakes. True when it was the first.</summary>
        public bool Fail(Exception e)
        {
            lock (owner._gate)
            {
                if (Failure is not null)
                    return false;
                Failure = e;
                Monitor.PulseAll(owner._gate);
            }
            Cancel.Cancel();
            Output.Abort(keepControl: false);
            Urgent?.Abort();
            return true;
        }

        public void Dispose()
        {
            Urgent?.Abort();
            if (OwnsOutput)
                Output.Dispose();
        }
    }

    /// <summary>
    /// The source's end of an urgent channel: PAGES and ZERO_RUN answers one way, the destination's requests and
    /// postcopy messages the other (read by a thread of its own).
    /// </summary>
    private sealed class UrgentLink : IPageSink
    {
        private readonly System.IO.Stream _stream;
        private readonly RecordWriter _writer;
        private readonly Link _link;
        private volatile bool _aborted;

        private UrgentLink(System.IO.Stream stream, Link link)
        {
            _stream = stream;
            _writer = new RecordWriter(new BufferedStream(stream, 1 << 20));
            _link = link;
        }

        /// <summary>Held while an answer is written (and for END), so the two never interleave.</summary>
        public object Gate { get; } = new();

        /// <summary>END was written: nothing more goes out.</summary>
        public bool Ended { get; private set; }

        public long BytesWritten => _writer.BytesWritten;

        /// <summary>Connects, says hello, and becomes <paramref name="link"/>'s urgent channel before anything from it is read.</summary>
        public static void Connect(IChannelConnector connector, ulong sessionId, TimeSpan timeout, Link link, CancellationToken cancel)
        {
            var stream = connector.ConnectAsync(cancel).WaitAsync(TimeSpan.FromSeconds(10), cancel).GetAwaiter().GetResult();
            ChannelLiveness.Apply(stream, timeout);
            var urgent = new UrgentLink(stream, link);
            link.Urgent = urgent;
            stream.Write(ChannelHello.Encode(sessionId, ChannelHello.UrgentChannel));
            stream.Flush();
            new Thread(urgent.ReadReplies) { Name = "postcopy-urgent-requests", IsBackground = true }.Start();
        }

        private void ReadReplies()
        {
            try
            {
                while (true)
                    _link.OnReply(ReturnPath.Read(_stream));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                if (!_aborted)
                    _link.Fail(e);
            }
        }

        public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages) => _writer.WritePages(block, pageOffset, pages);

        public void WriteZeroRun(ushort block, ulong pageOffset, uint count) => _writer.WriteZeroRun(block, pageOffset, count);

        public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) =>
            throw new InvalidOperationException("the urgent channel carries pages only");

        public void EndPass(uint pass) => throw new InvalidOperationException("the urgent channel has no passes");

        public void Flush() => _writer.Flush();

        public void WriteEnd()
        {
            lock (Gate)
            {
                _writer.WriteEnd();
                Ended = true;
            }
        }

        public void Abort()
        {
            _aborted = true;
            ChannelLiveness.Reset(_stream);
        }
    }
}
