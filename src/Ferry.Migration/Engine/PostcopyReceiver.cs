using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// The switch as the destination's precopy loaders see it: OWED_PAGES on channel 0, then POSTCOPY_START on every
/// channel, each checked as hostile input (postcopy negotiated, owed pages only on channel 0 and before its switch,
/// no block's pages given twice, one switch per channel, every channel naming the same owed count).
/// </summary>
internal sealed class PostcopySwitch(StreamCapabilities accepted, int channels, IReadOnlyList<RamBlock> blocks)
{
    private readonly bool[] _started = new bool[channels];
    private ulong? _declared;

    /// <summary>The pages each block is owed (local block order).</summary>
    public PageSet[] Owed { get; } = [.. blocks.Select(b => new PageSet(b.PageCount))];

    /// <summary>
    /// What the destination accepts of <paramref name="offered"/>. A destination without a memory seam declines
    /// postcopy (the source then refuses to start with postcopy-ram), and so does a verified migration: its digests
    /// are compared before the guest runs, postcopy runs the guest before the last pages arrive.
    /// </summary>
    public static StreamCapabilities Acceptable(IMigrationTarget target, StreamCapabilities offered)
    {
        var accepted = offered & StreamCapabilities.All;
        if (target.Postcopy is null || accepted.HasFlag(StreamCapabilities.Verify))
            accepted &= ~StreamCapabilities.Postcopy;
        return accepted;
    }

    /// <summary>At least one channel switched to postcopy.</summary>
    public bool Switched
    {
        get
        {
            lock (_started)
                return _started.Any(s => s);
        }
    }

    /// <summary>How many pages POSTCOPY_START said are owed.</summary>
    public ulong DeclaredOwed => _declared ?? 0;

    /// <summary>Takes a switch record; true when it was this channel's POSTCOPY_START (its precopy is over).</summary>
    public bool Take(in Record record, int channel)
    {
        if (!accepted.HasFlag(StreamCapabilities.Postcopy))
            throw new StreamFormatException($"channel {channel}: a {record.Type} record, but postcopy was not negotiated");
        lock (_started)
        {
            if (record.Type == RecordType.PostcopyStart)
            {
                if (_started[channel])
                    throw new StreamFormatException($"channel {channel}: a second POSTCOPY_START (duplicate switch)");
                if (_declared is { } declared && declared != record.PageCount)
                    throw new StreamFormatException($"channel {channel}: POSTCOPY_START says {record.PageCount} pages are owed, another channel said {declared}");
                _started[channel] = true;
                _declared = record.PageCount;
                return true;
            }
            if (channel != 0)
                throw new StreamFormatException($"channel {channel}: OWED_PAGES outside channel 0");
            if (_started[0])
                throw new StreamFormatException("OWED_PAGES after channel 0's POSTCOPY_START");
            var owed = Owed[record.Block];
            var firstWord = (int)(record.PageOffset >> Page.Shift >> 6);
            var bitmap = record.Data.Span;
            var words = owed.Words.Slice(firstWord, Math.Min(bitmap.Length / 8, owed.Words.Length - firstWord));
            if (words.ContainsAnyExcept(0UL))
                throw new StreamFormatException($"OWED_PAGES of block '{blocks[record.Block].Name}' from page {record.PageOffset >> Page.Shift} given twice");
            owed.ReplaceWords(record.PageOffset >> Page.Shift, bitmap);
            return false;
        }
    }

    /// <summary>After the loaders: every channel switched, and the owed bitmaps hold the count the switch named.</summary>
    public void CheckComplete()
    {
        lock (_started)
        {
            if (Array.IndexOf(_started, false) is var channel and >= 0)
                throw new StreamFormatException($"channel {channel} ended with END while the others switched to postcopy");
        }
        var counted = Owed.Aggregate(0UL, (sum, set) => sum + set.Count());
        if (counted != DeclaredOwed)
            throw new StreamFormatException($"POSTCOPY_START says {DeclaredOwed} pages are owed, the OWED_PAGES records hold {counted}");
    }
}

public static partial class MigrationReceiver
{
    private sealed partial class IncomingSession
    {
        /// <summary>The operator's handle on the postcopy phase (status, migrate-recover).</summary>
        public PostcopyIncoming Postcopy { get; init; } = null!;

        private TimeSpan ChannelTimeout => timeout;

        /// <summary>
        /// Every channel switched: accept the urgent channel, restore the state, mark the owed pages, run the guest,
        /// then fill the owed pages until none is left (through pauses and recoveries). Failures before the guest runs
        /// are the precopy ones (FAILED to the source, which resumes it); after, see <see cref="PostcopyReceiver"/>.
        /// </summary>
        private IncomingReport RunPostcopy(IMigrationTarget target, StreamHeader header, PostcopySwitch postcopy, List<StateSection> sections, int passes,
            IChannelListener listener, CancellationToken cancel)
        {
            postcopy.CheckComplete();
            var memory = target.Postcopy ?? throw new InvalidOperationException("postcopy was accepted without a memory seam");
            var receiver = new PostcopyReceiver(this, target, memory, header, postcopy, cancel);
            var urgent = listener.AcceptAsync(cancel).WaitAsync(timeout, cancel).GetAwaiter().GetResult();
            lock (_streams)
                _streams.Add(urgent);
            ChannelLiveness.Apply(urgent, timeout);
            var urgentInput = new BufferedStream(urgent, 1 << 20);
            WithDeadline(urgent, () =>
            {
                ChannelHello.ReadUrgent(urgentInput, header.SessionId);
                return 0;
            }, "urgent channel hello");

            var restoreStart = Stopwatch.GetTimestamp();
            target.RestoreState(sections);
            receiver.MarkOwed();
            var restored = Stopwatch.GetTimestamp();
            // From here on the guest may run here: FAILED is never sent again, whatever happens.
            _resuming = true;
            receiver.StartFaultHandling();
            target.ResumeGuest();
            var resumed = Stopwatch.GetTimestamp();
            var first = receiver.FirstLink(control, _returnPath, [.. _readers.Select(r => r!)], [.. _streams], urgent, urgentInput);
            receiver.Run(first, listener);

            var totals = receiver.Readers.Aggregate((Data: 0UL, Zero: 0UL, Ballooned: 0UL), (t, r) => (t.Data + r.Totals.Pages, t.Zero + r.Totals.ZeroPages, t.Ballooned + r.Totals.BalloonedPages));
            return new IncomingReport(
                header.Channels, totals.Data, totals.Zero, totals.Ballooned, receiver.Readers.Sum(r => r.BytesRead), passes,
                _clock.Elapsed.TotalMilliseconds, 0,
                Stopwatch.GetElapsedTime(restoreStart, restored).TotalMilliseconds, Stopwatch.GetElapsedTime(restored, resumed).TotalMilliseconds,
                SourceToldResumed: true, Postcopy: receiver.Stats());
        }

        /// <summary>
        /// The destination's postcopy phase. Pages arrive on the bulk channels (the background) and on the urgent
        /// channel (answers to requests); each is placed once through the memory seam (the first copy of a page
        /// wins, a later one is dropped, a page that was never owed is refused). A fault on a page still missing
        /// becomes a request unless one is out. A broken connection pauses (postcopy-paused): the guest's faulting
        /// threads wait, nothing is lost, until <see cref="PostcopyIncoming.Recover"/> brings the source back, which
        /// is then told which pages are still needed. A source that closed its connections (it exited) is a clear,
        /// unrecoverable failure: the pages it held are gone.
        /// </summary>
        private sealed class PostcopyReceiver
        {
            private readonly IncomingSession _session;
            private readonly IMigrationTarget _target;
            private readonly IPostcopyMemory _memory;
            private readonly StreamHeader _header;
            private readonly IReadOnlyList<BlockDescriptor> _local;
            private readonly int[] _streamIndex;       // local block -> the stream's block index (requests, needed bitmaps)
            private readonly PageSet[] _original;      // owed at the switch
            private readonly PageSet[] _missing;       // owed and not arrived; taking a page out of it is receiving it
            private readonly PageSet[] _requested;     // asked for on the current connection
            private readonly CancellationToken _cancel;
            private readonly PostcopyIncoming _handle;
            private readonly object _gate = new();     // the link, completion, the pending faults
            private readonly Dictionary<(int Block, ulong Page), List<PostcopyFault>> _pending = [];
            private readonly LatencyHistogram _latency = new(); // fault to placement
            private readonly PostcopyBlocktime _blocktime;
            private readonly Stopwatch _clock = Stopwatch.StartNew();
            private readonly List<Link> _links = [];
            private long _faults, _requests, _duplicates, _urgentPages, _backgroundPages, _pendingCount;
            private int _recoveries;
            private Link? _link;
            private volatile bool _finished;
            private TimeSpan _pausedTotal;
            private TimeSpan? _pausedSince, _endAt;
            private string? _pausedBecause;
            private Thread? _faultThread;

            public PostcopyReceiver(IncomingSession session, IMigrationTarget target, IPostcopyMemory memory, StreamHeader header, PostcopySwitch postcopy, CancellationToken cancel)
            {
                _session = session;
                _target = target;
                _memory = memory;
                _header = header;
                _cancel = cancel;
                _handle = session.Postcopy;
                _local = [.. target.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size))];
                _streamIndex = [.. target.Blocks.Select(b => header.Blocks.Select((d, i) => (d, i)).First(x => x.d.Name == b.Name).i)];
                _original = postcopy.Owed;
                _missing = [.. _original.Select(s => s.Clone())];
                _requested = [.. _original.Select(s => new PageSet(s.PageCount))];
                _blocktime = new PostcopyBlocktime(memory.VcpuCount);
                _handle.Attach(Stats);
            }

            /// <summary>Every reader of every connection (for the report's totals).</summary>
            public IEnumerable<RecordReader> Readers
            {
                get
                {
                    lock (_gate)
                        return [.. _links.SelectMany(l => l.Readers.Append(l.UrgentReader))];
                }
            }

            public void MarkOwed()
            {
                for (var b = 0; b < _original.Length; b++)
                    _memory.MarkOwed(b, _original[b]);
            }

            public void StartFaultHandling()
            {
                _faultThread = new Thread(HandleFaults) { Name = "postcopy-faults", IsBackground = true };
                _faultThread.Start();
            }

            public Link FirstLink(System.IO.Stream control, object returnGate, RecordReader[] readers, System.IO.Stream[] streams, System.IO.Stream urgent, System.IO.Stream urgentInput)
            {
                var urgentReader = new RecordReader(urgentInput, _local);
                urgentReader.AdoptHeader(_header);
                var link = new Link(control, returnGate, readers, [.. streams], urgent, urgentReader)
                {
                    KeepAlive = ((StreamCapabilities)_header.Capabilities).HasFlag(StreamCapabilities.KeepAlive),
                };
                lock (_gate)
                {
                    _links.Add(link);
                    _link = link;
                }
                _handle.MoveTo(MigrationStatus.PostcopyActive);
                Send(link, s => PostcopyMessages.WriteRunning(s));
                // The guest ran (and faulted) before there was a connection to ask on: those faults are asked for now.
                RequestOpenFaults();
                return link;
            }

            /// <summary>Asks the current connection for every page a thread still waits on (a request per page and connection at most).</summary>
            private void RequestOpenFaults()
            {
                (int Block, ulong Page)[] open;
                lock (_gate)
                    open = [.. _pending.Keys];
                foreach (var (block, page) in open)
                {
                    if (_missing[block].Contains(page))
                        Request(block, page);
                }
            }

            /// <summary>Serves connections until every owed page is here; throws when the source is gone or the wait for a recovery is given up.</summary>
            public void Run(Link link, IChannelListener listener)
            {
                try
                {
                    while (!Serve(link))
                    {
                        var reason = Describe(link.Failure!).Message;
                        if (link.Failure is MemoryFailure local)
                        {
                            // This side cannot place pages: no reconnection can help (the machine stops on it too).
                            _handle.MoveTo(MigrationStatus.Failed, local.Message);
                            throw new MigrationException(MigrationErrorKind.Internal, $"this destination could not place the guest's memory after the switch to postcopy: {local.Message}", local.InnerException);
                        }
                        if (link.SourceGone)
                        {
                            var lost = Missing();
                            _handle.MoveTo(MigrationStatus.Failed, reason);
                            throw new MigrationException(MigrationErrorKind.ChannelFailed,
                                $"the source closed its connections after the switch to postcopy (it exited or was killed): {lost} pages of the guest's memory were only there, so this guest cannot continue");
                        }
                        link = Paused(reason);
                    }
                    _handle.MoveTo(MigrationStatus.Completed);
                }
                finally
                {
                    _finished = true;
                    _faultThread?.Join();
                    if (listener is not null)
                    {
                        lock (_gate)
                        {
                            foreach (var l in _links.Skip(1))
                                l.Dispose();
                        }
                    }
                }
            }

            private ulong Missing() => _missing.Aggregate(0UL, (sum, set) => sum + set.Count());

            /// <summary>One connection: loaders for every channel and the urgent one, a heartbeat; true once every owed page is in place.</summary>
            private bool Serve(Link link)
            {
                var threads = new List<Thread>();
                for (var c = 0; c <= link.Readers.Length; c++)
                {
                    var channel = c;
                    var reader = c < link.Readers.Length ? link.Readers[c] : link.UrgentReader;
                    threads.Add(new Thread(() => Load(link, reader, channel == link.Readers.Length ? "urgent channel" : $"channel {channel}", channel == link.Readers.Length))
                    {
                        Name = $"postcopy-load{channel}",
                        IsBackground = true,
                    });
                }
                foreach (var thread in threads)
                    thread.Start();
                var period = _session.ChannelTimeout / 4;
                link.LastProgress = Stopwatch.GetTimestamp();
                using (new Timer(_ => Heartbeat(link), null, period, period))
                {
                    lock (_gate)
                    {
                        while (!link.Completed && link.Failure is null)
                            Monitor.Wait(_gate);
                    }
                }
                if (link.Completed)
                {
                    foreach (var thread in threads)
                        thread.Join();
                    return true;
                }
                foreach (var stream in link.Streams)
                    ChannelLiveness.Reset(stream);
                foreach (var thread in threads)
                    thread.Join();
                return false;
            }

            /// <summary>Loads one channel of a connection until its END.</summary>
            private void Load(Link link, RecordReader reader, string channel, bool urgent)
            {
                try
                {
                    while (true)
                    {
                        var record = reader.ReadRecord();
                        switch (record.Type)
                        {
                            case RecordType.Pages:
                            case RecordType.ZeroRun:
                                Receive(record, channel, urgent);
                                break;
                            case RecordType.KeepAlive:
                                break;
                            case RecordType.End:
                                Ended(link);
                                return;
                            default:
                                throw new StreamFormatException($"{channel}: a {record.Type} record after the switch to postcopy" +
                                    (record.Type is RecordType.PostcopyStart or RecordType.OwedPages ? " (a second switch)" : ""));
                        }
                    }
                }
                catch (Exception e) when (e is not OutOfMemoryException)
                {
                    Fail(link, e);
                }
            }

            /// <summary>Places the pages of a record that are still missing (the first copy wins); refuses pages never owed.</summary>
            private void Receive(in Record record, string channel, bool urgent)
            {
                var block = record.Block;
                var first = record.PageOffset >> Page.Shift;
                var position = first;
                if (_original[block].NextGap(ref position, first + record.PageCount, out var gap, out _))
                    throw new StreamFormatException($"{channel}: page {gap} of block '{_local[block].Name}' arrived, but this destination is not owed it");
                var placing = new Placing(this, block, first, record.Type == RecordType.Pages ? record.Data : ReadOnlyMemory<byte>.Empty);
                var placed = _missing[block].RemoveRange(first, record.PageCount, ref placing, static (ref Placing p, ulong start, ulong count) => p.Place(start, count));
                Interlocked.Add(ref urgent ? ref _urgentPages : ref _backgroundPages, (long)placed);
                Interlocked.Add(ref _duplicates, (long)(record.PageCount - placed));
            }

            /// <summary>Places one run of a record's newly received pages, then wakes the bookkeeping of the faults that waited for them.</summary>
            private readonly struct Placing(PostcopyReceiver owner, int block, ulong first, ReadOnlyMemory<byte> data)
            {
                public void Place(ulong start, ulong count)
                {
                    try
                    {
                        if (data.IsEmpty)
                            owner._memory.PlaceZero(block, start, count);
                        else
                            owner._memory.Place(block, start, data.Span.Slice((int)((start - first) << Page.Shift), (int)(count << Page.Shift)));
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        throw new MemoryFailure(e);
                    }
                    owner.Placed(block, start, count);
                }
            }

            /// <summary>The memory refused a placement (or completion): a failure of this side, not of the connection.</summary>
            private sealed class MemoryFailure(Exception inner) : Exception(inner.Message, inner);

            private void Placed(int block, ulong start, ulong count)
            {
                if (Interlocked.Read(ref _pendingCount) == 0)
                    return;
                var now = Stopwatch.GetTimestamp();
                lock (_gate)
                {
                    for (var page = start; page < start + count; page++)
                    {
                        if (!_pending.Remove((block, page), out var faults))
                            continue;
                        foreach (var fault in faults)
                        {
                            _latency.Record((long)Stopwatch.GetElapsedTime(fault.Timestamp, now).TotalNanoseconds);
                            _blocktime.Woken(fault.Vcpu, now);
                        }
                        _pendingCount -= faults.Count;
                    }
                }
            }

            /// <summary>A channel reached END: when all have and nothing is missing, postcopy is complete.</summary>
            private void Ended(Link link)
            {
                lock (_gate)
                {
                    if (++link.Ended <= link.Readers.Length)
                        return;
                }
                var missing = Missing();
                if (missing != 0)
                    throw new StreamFormatException($"the source ended every channel with {missing} owed pages never sent");
                lock (_gate)
                {
                    // Once: a recovery after every page arrived (DONE was lost) ends here again.
                    if (_endAt is null)
                    {
                        try
                        {
                            _memory.Complete();
                        }
                        catch (Exception e) when (e is not OutOfMemoryException)
                        {
                            throw new MemoryFailure(e);
                        }
                        _endAt = _clock.Elapsed;
                    }
                }
                var blocktime = _blocktime.PerVcpuNs();
                Send(link, s => PostcopyMessages.WriteDone(s, new PostcopyDoneMessage(
                    (ulong)Interlocked.Read(ref _faults), (ulong)Interlocked.Read(ref _requests), (ulong)Interlocked.Read(ref _duplicates),
                    _blocktime.AllBlockedNs, (ulong)_latency.Percentile(50).TotalNanoseconds, (ulong)_latency.Percentile(99).TotalNanoseconds, (ulong)_latency.Max.TotalNanoseconds, blocktime)));
                lock (_gate)
                {
                    link.Completed = true;
                    Monitor.PulseAll(_gate);
                }
            }

            /// <summary>The first failure of a connection ends it (the others are its echo); a clean end of stream means the source is gone.</summary>
            private void Fail(Link link, Exception e)
            {
                lock (_gate)
                {
                    if (link.Failure is not null || link.Completed)
                        return;
                    link.Failure = e;
                    link.SourceGone = e is StreamFormatException { EndOfStream: true };
                    Monitor.PulseAll(_gate);
                }
            }

            /// <summary>A postcopy message on the urgent channel's return direction; a connection that cannot take it has failed.</summary>
            private void Send(Link link, Action<System.IO.Stream> write)
            {
                try
                {
                    lock (link.UrgentGate)
                        write(link.Urgent);
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
                {
                    Fail(link, e);
                }
            }

            /// <summary>Every quarter time-out: KEEPALIVE on channel 0's return path; a source silent for the whole time-out breaks the connection.</summary>
            private void Heartbeat(Link link)
            {
                if (link.Failure is not null || link.Completed || !link.KeepAlive)
                    return;
                var bytes = link.Readers.Sum(r => r.BytesRead) + link.UrgentReader.BytesRead;
                var now = Stopwatch.GetTimestamp();
                if (bytes != link.LastBytes)
                    (link.LastBytes, link.LastProgress) = (bytes, now);
                else if (Stopwatch.GetElapsedTime(link.LastProgress, now) >= _session.ChannelTimeout)
                    Fail(link, new TimeoutException($"no data or keepalive from the source for {_session.ChannelTimeout.TotalMilliseconds:F0} ms"));
                try
                {
                    lock (link.ReturnGate)
                        ReturnPath.WriteKeepAlive(link.Control);
                }
                catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
                {
                    Fail(link, e);
                }
            }

            /// <summary>Drains the memory's faults for the whole postcopy phase: a fault on a missing page becomes one request (while connected).</summary>
            private void HandleFaults()
            {
                var pages = _original.Select(s => s.PageCount).ToArray();
                while (!_finished)
                {
                    if (!_memory.TryTakeFault(TimeSpan.FromMilliseconds(50), out var fault))
                        continue;
                    if ((uint)fault.Block >= (uint)pages.Length || fault.Page >= pages[fault.Block])
                        continue; // not a page of this guest: the memory layer's bug, nothing to ask for
                    Interlocked.Increment(ref _faults);
                    if (!_missing[fault.Block].Contains(fault.Page))
                        continue; // arrived meanwhile: being placed, which wakes the thread
                    lock (_gate)
                    {
                        if (!_pending.TryGetValue((fault.Block, fault.Page), out var faults))
                            _pending[(fault.Block, fault.Page)] = faults = [];
                        faults.Add(fault);
                        _pendingCount++;
                        _blocktime.Blocked(fault.Vcpu, fault.Timestamp);
                    }
                    // Placed between the check and the bookkeeping: nobody else will close it.
                    if (!_missing[fault.Block].Contains(fault.Page))
                        Placed(fault.Block, fault.Page, 1);
                    else
                        Request(fault.Block, fault.Page);
                }
            }

            /// <summary>Asks for a page once per connection; a paused migration asks again after the recovery.</summary>
            private void Request(int block, ulong page)
            {
                Link? link;
                lock (_gate)
                {
                    link = _link;
                    if (link is null || link.Failure is not null || _requested[block].Contains(page))
                        return;
                    _requested[block].Add(page);
                }
                Interlocked.Increment(ref _requests);
                Send(link, s => PostcopyMessages.WriteRequest(s, new PageRequest(_streamIndex[block], page, 1)));
            }

            /// <summary>postcopy-paused until a recovery connects (or the wait is given up: an exception).</summary>
            private Link Paused(string reason)
            {
                lock (_gate)
                {
                    _link = null;
                    _pausedSince = _clock.Elapsed;
                    _pausedBecause = reason;
                }
                _handle.MoveTo(MigrationStatus.PostcopyPaused, reason);
                while (true)
                {
                    var listener = _handle.WaitForRecovery(_cancel);
                    if (listener is null)
                    {
                        _handle.MoveTo(MigrationStatus.Failed, reason);
                        throw new MigrationException(MigrationErrorKind.Cancelled,
                            $"postcopy was paused ({reason}) and the wait for a recovery was given up: {Missing()} pages of the guest's memory are still on the source");
                    }
                    try
                    {
                        using (listener)
                        {
                            var link = Reconnect(listener);
                            lock (_gate)
                            {
                                _pausedTotal += _clock.Elapsed - _pausedSince!.Value;
                                _pausedSince = null;
                                _recoveries++;
                            }
                            _handle.MoveTo(MigrationStatus.PostcopyActive);
                            return link;
                        }
                    }
                    catch (Exception e) when (e is not OutOfMemoryException)
                    {
                        _handle.MoveTo(MigrationStatus.PostcopyPaused, $"{reason}; recovery on {listener.Description} failed: {Describe(e).Message}");
                    }
                }
            }

            /// <summary>The source's reconnection: its header (resume, same session), every channel, the urgent channel; then the pages still needed, and the requests still open.</summary>
            private Link Reconnect(IChannelListener listener)
            {
                var streams = new List<System.IO.Stream>();
                try
                {
                    var timeout = _session.ChannelTimeout;
                    var control = Accept(listener, streams);
                    var reader0 = new RecordReader(new BufferedStream(control, 1 << 20), _local);
                    var header = _session.WithDeadline(control, () => reader0.ReadHeader(), "recovery stream header");
                    var offered = (StreamCapabilities)header.Capabilities;
                    if (!offered.HasFlag(StreamCapabilities.PostcopyResume) || header.SessionId != _header.SessionId)
                    {
                        var why = offered.HasFlag(StreamCapabilities.PostcopyResume)
                            ? $"this destination is recovering migration {_header.SessionId:X16}, not {header.SessionId:X16}"
                            : "this destination waits for a postcopy recovery (migrate with resume), not a new migration";
                        ReturnPath.WriteFailed(control, why);
                        throw new StreamFormatException(why);
                    }
                    ReturnPath.WriteAccept(control, (ulong)(offered & (StreamCapabilities.All | StreamCapabilities.PostcopyResume)));
                    var readers = new RecordReader?[header.Channels];
                    readers[0] = reader0;
                    for (var i = 1; i < header.Channels; i++)
                    {
                        var stream = Accept(listener, streams);
                        var buffered = new BufferedStream(stream, 1 << 20);
                        var index = _session.WithDeadline(stream, () => ChannelHello.Read(buffered, header.SessionId, header.Channels), "recovery channel hello");
                        if (readers[index] is not null)
                            throw new StreamFormatException($"channel {index} joined twice");
                        readers[index] = new RecordReader(buffered, _local);
                        readers[index]!.AdoptHeader(header);
                    }
                    var urgent = Accept(listener, streams);
                    var urgentInput = new BufferedStream(urgent, 1 << 20);
                    _session.WithDeadline(urgent, () =>
                    {
                        ChannelHello.ReadUrgent(urgentInput, header.SessionId);
                        return 0;
                    }, "recovery urgent channel hello");
                    var urgentReader = new RecordReader(urgentInput, _local);
                    urgentReader.AdoptHeader(header);
                    var link = new Link(control, new object(), [.. readers.Select(r => r!)], [.. streams], urgent, urgentReader)
                    {
                        KeepAlive = offered.HasFlag(StreamCapabilities.KeepAlive),
                    };
                    // What the source must send again: every page still missing, including what was in flight.
                    lock (link.UrgentGate)
                    {
                        for (var b = 0; b < _missing.Length; b++)
                            PostcopyMessages.WriteNeeded(urgent, _streamIndex[b], _missing[b]);
                        PostcopyMessages.WriteNeededEnd(urgent, Missing());
                    }
                    lock (_gate)
                    {
                        _links.Add(link);
                        _link = link;
                        foreach (var requested in _requested)
                            requested.Clear();
                    }
                    // Threads still wait for pages they asked for on the broken connection: ask again.
                    RequestOpenFaults();
                    return link;
                }
                catch
                {
                    foreach (var stream in streams)
                        ChannelLiveness.Reset(stream);
                    throw;
                }
            }

            private System.IO.Stream Accept(IChannelListener listener, List<System.IO.Stream> streams)
            {
                var stream = listener.AcceptAsync(_cancel).WaitAsync(ChannelJoinTimeout, _cancel).GetAwaiter().GetResult();
                streams.Add(stream);
                ChannelLiveness.Apply(stream, _session.ChannelTimeout);
                return stream;
            }

            public PostcopyStats Stats()
            {
                lock (_gate)
                {
                    var now = _clock.Elapsed;
                    return new PostcopyStats
                    {
                        OwedPages = (long)_original.Aggregate(0UL, (sum, set) => sum + set.Count()),
                        Requests = Interlocked.Read(ref _requests),
                        UrgentPages = Interlocked.Read(ref _urgentPages),
                        BackgroundPages = Interlocked.Read(ref _backgroundPages),
                        Recoveries = _recoveries,
                        ActiveMs = (_endAt ?? now).TotalMilliseconds,
                        PausedMs = (_pausedTotal + (_pausedSince is { } since ? now - since : TimeSpan.Zero)).TotalMilliseconds,
                        PausedBecause = _pausedBecause,
                        DestinationFigures = true,
                        Faults = Interlocked.Read(ref _faults),
                        DuplicatePages = Interlocked.Read(ref _duplicates),
                        BlocktimeMs = _blocktime.AllBlockedNs / 1e6,
                        VcpuBlocktimeMs = [.. _blocktime.PerVcpuNs().Select(ns => ns / 1e6)],
                        LatencyP50Us = _latency.Percentile(50).TotalMicroseconds,
                        LatencyP99Us = _latency.Percentile(99).TotalMicroseconds,
                        LatencyMaxUs = _latency.Max.TotalMicroseconds,
                    };
                }
            }

            /// <summary>One connection of the postcopy phase, destination side.</summary>
            internal sealed class Link(System.IO.Stream control, object returnGate, RecordReader[] readers, System.IO.Stream[] streams, System.IO.Stream urgent, RecordReader urgentReader) : IDisposable
            {
                public System.IO.Stream Control { get; } = control;

                /// <summary>One message at a time on channel 0's return path.</summary>
                public object ReturnGate { get; } = returnGate;
                public RecordReader[] Readers { get; } = readers;
                public System.IO.Stream[] Streams { get; } = [.. streams, urgent];
                public System.IO.Stream Urgent { get; } = urgent;
                public RecordReader UrgentReader { get; } = urgentReader;

                /// <summary>One message at a time on the urgent channel's return direction.</summary>
                public object UrgentGate { get; } = new();
                public Exception? Failure { get; set; }
                public bool SourceGone { get; set; }
                public bool Completed { get; set; }
                public int Ended { get; set; }
                public long LastBytes { get; set; } = -1;
                public long LastProgress { get; set; }

                /// <summary>Capability keepalive was negotiated on this connection: both sides say they are alive, so silence is a failure.</summary>
                public bool KeepAlive { get; init; }

                public void Dispose()
                {
                    foreach (var stream in Streams)
                        stream.Dispose();
                }
            }
        }
    }
}
