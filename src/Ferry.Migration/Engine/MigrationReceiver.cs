using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// What a destination loaded. <paramref name="SourceToldResumed"/> false: the guest runs here but RESUMED could not be
/// sent (the source stays paused). <paramref name="VerifiedChunks"/> and <paramref name="VerifyMs"/>: a verified
/// migration's chunks compared, and the loaders' time comparing them (summed over the channels).
/// </summary>
public sealed record IncomingReport(
    int Channels,
    ulong DataPages,
    ulong ZeroPages,
    ulong BalloonedPages,
    long Bytes,
    int Passes,
    double TotalMs,
    double LoadAfterLastByteMs,
    double StateRestoreMs = 0,
    double ResumeMs = 0,
    bool SourceToldResumed = true,
    long VerifiedChunks = 0,
    double VerifyMs = 0,
    PostcopyStats? Postcopy = null);

/// <summary>
/// The destination side: accepts channel 0, checks the header against its own RAM blocks and answers with the
/// capabilities it accepts, accepts the other channels (each must name this session and a free channel index),
/// then loads every channel on its own thread straight into guest RAM. State sections (channel 0 only) are
/// restored after every channel has reached END; then the guest resumes and the source is told. Any fault, on any
/// channel, fails the whole load at once: the reason goes back to the source first (FAILED), then every channel is
/// shut, which wakes every loader; the caller gets a <see cref="MigrationException"/> and the guest was never
/// resumed. FAILED is never sent once the guest was resumed. With the keepalive capability, a KEEPALIVE goes back
/// every quarter of the channel time-out, and a source silent for the whole time-out fails the load.
/// </summary>
public static partial class MigrationReceiver
{
    private static readonly TimeSpan ChannelJoinTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Waits (until <paramref name="cancel"/>) for a source, then loads its stream into <paramref name="target"/>.</summary>
    /// <param name="channelTimeout">How long a silent source is waited for once it connected (default: ferry-channel-timeout-ms's default).</param>
    /// <param name="postcopy">The operator's handle on a postcopy phase (status, migrate-recover); without one a paused postcopy can only be given up through <paramref name="cancel"/>.</param>
    public static IncomingReport Receive(IMigrationTarget target, IChannelListener listener, CancellationToken cancel, TimeSpan? channelTimeout = null, PostcopyIncoming? postcopy = null)
    {
        var timeout = channelTimeout ?? TimeSpan.FromMilliseconds(MigrationParameterTable.ChannelTimeout.Default);
        System.IO.Stream first;
        try
        {
            first = listener.AcceptAsync(cancel).GetAwaiter().GetResult();
        }
        catch (MigrationTlsException e)
        {
            // Refused before a record was read: the reason is TLS's, told to the source already where it could be.
            throw new MigrationException(MigrationErrorKind.TlsRefused, e.Message, e);
        }
        var session = new IncomingSession(first, timeout) { Postcopy = postcopy ?? new PostcopyIncoming() };
        try
        {
            return session.Load(target, listener, cancel);
        }
        finally
        {
            session.Dispose();
        }
    }

    /// <summary>One incoming migration: its streams, the return path and the first failure.</summary>
    private sealed partial class IncomingSession(System.IO.Stream control, TimeSpan timeout) : IDisposable
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private readonly List<System.IO.Stream> _streams = [control];
        private readonly object _returnPath = new(); // one message at a time on channel 0's way back
        private Exception? _firstError;
        private string? _reported;  // the reason sent back, once
        private bool _resuming;     // from here on the guest may run: FAILED is never sent
        private RecordReader?[] _readers = [];
        private Timer? _heartbeat;
        private long _lastBytes = -1;
        private long _lastProgress;
        private volatile bool _loading = true;

        /// <summary>
        /// Read buffering of a precopy channel. A read at least this large bypasses the buffer, so page data landing in
        /// guest memory (<see cref="RecordReader.Landing"/>) is copied from the buffer only for the part that came in
        /// with a record's header.
        /// </summary>
        private const int ChannelReadBuffer = 64 << 10;

        public IncomingReport Load(IMigrationTarget target, IChannelListener listener, CancellationToken cancel)
        {
            try
            {
                ChannelLiveness.Apply(control, timeout);
                var local = target.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray();
                var reader0 = new RecordReader(new BufferedStream(control, ChannelReadBuffer), local);
                var header = WithDeadline(control, () => reader0.ReadHeader(), "the stream header");
                var accepted = PostcopySwitch.Acceptable(target, (StreamCapabilities)header.Capabilities);
                var postcopy = new PostcopySwitch(accepted, header.Channels, target.Blocks);
                ReturnPath.WriteAccept(control, (ulong)accepted);
                _readers = new RecordReader?[header.Channels];
                _readers[0] = reader0;
                // Verification follows what is loaded from the first record on (before any downtime).
                var digests = accepted.HasFlag(StreamCapabilities.Verify) ? new DestinationDigests(target.Blocks, header) : null;
                if (accepted.HasFlag(StreamCapabilities.KeepAlive))
                {
                    _lastProgress = Stopwatch.GetTimestamp();
                    var period = timeout / 4;
                    _heartbeat = new Timer(_ => Heartbeat(), null, period, period);
                }
                // Channels report each PASS_END here; the last of a pass tells the source (capability pass-acks), so
                // the source can let the guest run until the destination has caught up instead of pausing it while
                // buffered pages are still being loaded.
                var passEnds = new Dictionary<uint, int>();
                void PassEnded(uint pass)
                {
                    if (!accepted.HasFlag(StreamCapabilities.PassAcks))
                        return;
                    lock (passEnds)
                    {
                        passEnds[pass] = passEnds.GetValueOrDefault(pass) + 1;
                        if (passEnds[pass] != header.Channels)
                            return;
                        passEnds.Remove(pass);
                    }
                    Reply(ReturnPath.WritePassLoaded, pass);
                }
                // One-time restore work, overlapped with the pages instead of inside the downtime.
                var prepared = Task.Run(target.PrepareRestore, cancel);

                for (var i = 1; i < header.Channels; i++)
                {
                    var stream = listener.AcceptAsync(cancel).WaitAsync(ChannelJoinTimeout, cancel).GetAwaiter().GetResult();
                    lock (_streams)
                        _streams.Add(stream);
                    ChannelLiveness.Apply(stream, timeout);
                    var buffered = new BufferedStream(stream, ChannelReadBuffer);
                    var index = WithDeadline(stream, () => ChannelHello.Read(buffered, header.SessionId, header.Channels), "a channel hello");
                    if (_readers[index] is not null)
                        throw new StreamFormatException($"channel {index} joined twice");
                    _readers[index] = new RecordReader(buffered, local);
                    _readers[index]!.AdoptHeader(header);
                }

                var sections = new List<StateSection>();
                var passes = new int[header.Channels];
                var threads = new Thread[header.Channels];
                var lastByte = new long[header.Channels];
                for (var c = 0; c < header.Channels; c++)
                {
                    var channel = c;
                    threads[c] = new Thread(() =>
                    {
                        try
                        {
                            passes[channel] = LoadChannel(_readers[channel]!, channel, target, sections, PassEnded, postcopy, digests);
                            lastByte[channel] = Stopwatch.GetTimestamp();
                        }
                        catch (Exception e)
                        {
                            Fail(e);
                        }
                    })
                    { Name = $"migration-load{c}", IsBackground = true };
                    threads[c].Start();
                }
                foreach (var thread in threads)
                    thread.Join();
                _loading = false;
                if (_firstError is { } error)
                    throw error;
                prepared.GetAwaiter().GetResult();
                if (postcopy.Switched)
                    return RunPostcopy(target, header, postcopy, sections, passes.Max(), listener, cancel);
                var restoreStart = Stopwatch.GetTimestamp();
                target.RestoreState(sections);
                var restored = Stopwatch.GetTimestamp();
                _resuming = true;
                target.ResumeGuest();
                var resumed = Stopwatch.GetTimestamp();
                // The guest runs here now, whatever happens to the return path: a source that does not hear RESUMED
                // stays paused (docs/migration.md, the point of no return), so this side must not give up.
                var confirmed = Reply(ReturnPath.WriteResumed);
                var totals = _readers.Aggregate((Data: 0UL, Zero: 0UL, Ballooned: 0UL), (t, r) => (t.Data + r!.Totals.Pages, t.Zero + r.Totals.ZeroPages, t.Ballooned + r.Totals.BalloonedPages));
                return new IncomingReport(
                    header.Channels, totals.Data, totals.Zero, totals.Ballooned, _readers.Sum(r => r!.BytesRead), passes.Max(),
                    _clock.Elapsed.TotalMilliseconds, Stopwatch.GetElapsedTime(lastByte.Max(), Stopwatch.GetTimestamp()).TotalMilliseconds,
                    Stopwatch.GetElapsedTime(restoreStart, restored).TotalMilliseconds, Stopwatch.GetElapsedTime(restored, resumed).TotalMilliseconds,
                    SourceToldResumed: confirmed, VerifiedChunks: digests?.Chunks ?? 0, VerifyMs: digests?.Milliseconds ?? 0);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                var (kind, message) = Describe(_firstError ?? e);
                Fail(_firstError ?? e);
                throw new MigrationException(kind, _reported ?? message, e);
            }
        }

        /// <summary>
        /// The first failure wins: its reason goes back to the source (unless the guest may already run here), then
        /// every channel is shut so that every loader wakes up. Later failures are its echo.
        /// </summary>
        private void Fail(Exception e)
        {
            if (Interlocked.CompareExchange(ref _firstError, e, null) is not null)
                return;
            _loading = false;
            if (!_resuming)
            {
                var message = Describe(e).Message;
                if (Reply((s, m) => ReturnPath.WriteFailed(s, m), message))
                    _reported = message;
            }
            lock (_streams)
            {
                foreach (var stream in _streams)
                    ChannelLiveness.Wake(stream);
            }
        }

        private static (MigrationErrorKind Kind, string Message) Describe(Exception e) => e switch
        {
            MigrationException m => (m.Kind, m.Message),
            StreamFormatException or InvalidDataException => (MigrationErrorKind.InvalidStream, $"bad migration stream: {e.Message}"),
            MigrationTlsException => (MigrationErrorKind.TlsRefused, e.Message),
            TimeoutException => (MigrationErrorKind.Timeout, e.Message.StartsWith("no ", StringComparison.Ordinal) ? e.Message : $"a migration channel did not join within {ChannelJoinTimeout.TotalSeconds} s"),
            IOException or ObjectDisposedException => (MigrationErrorKind.ChannelFailed, $"migration connection lost: {e.Message}"),
            OperationCanceledException => (MigrationErrorKind.Cancelled, "migration load cancelled"),
            _ => (MigrationErrorKind.Internal, $"internal error: {e.Message}"),
        };

        /// <summary>Sends one return-path message; false when the source's side is gone.</summary>
        private bool Reply<T>(Action<System.IO.Stream, T> write, T argument)
        {
            try
            {
                lock (_returnPath)
                    write(control, argument);
                return true;
            }
            catch (Exception e) when (e is IOException or ObjectDisposedException or NotSupportedException)
            {
                // Reading the channels will say why (truncated, reset), which is the error worth reporting.
                return false;
            }
        }

        private bool Reply(Action<System.IO.Stream> write) => Reply<int>((s, _) => write(s), 0);

        /// <summary>Every quarter time-out: KEEPALIVE to the source; and while loading, fail when the source has been silent for the whole time-out.</summary>
        private void Heartbeat()
        {
            if (_firstError is not null)
                return;
            if (_loading)
            {
                var bytes = _readers.Sum(r => r?.BytesRead ?? 0);
                var now = Stopwatch.GetTimestamp();
                if (bytes != _lastBytes)
                    (_lastBytes, _lastProgress) = (bytes, now);
                else if (Stopwatch.GetElapsedTime(_lastProgress, now) >= timeout)
                {
                    Fail(new TimeoutException($"no data or keepalive from the source for {timeout.TotalMilliseconds:F0} ms"));
                    return;
                }
            }
            if (!_resuming)
                Reply(ReturnPath.WriteKeepAlive);
        }

        /// <summary>Runs a read that must finish within the channel time-out (the stream is shut when it does not).</summary>
        private T WithDeadline<T>(System.IO.Stream stream, Func<T> read, string what)
        {
            var expired = 0;
            using var timer = new Timer(_ =>
            {
                Volatile.Write(ref expired, 1);
                ChannelLiveness.Wake(stream);
            }, null, timeout, Timeout.InfiniteTimeSpan);
            try
            {
                return read();
            }
            catch (Exception e) when (Volatile.Read(ref expired) != 0 && e is IOException or ObjectDisposedException or StreamFormatException)
            {
                throw new TimeoutException($"no {what} from the source within {timeout.TotalMilliseconds:F0} ms");
            }
        }

        public void Dispose()
        {
            _heartbeat?.Dispose();
            lock (_streams)
            {
                foreach (var stream in _streams)
                    stream.Dispose();
            }
        }
    }

    /// <summary>
    /// Loads one channel until its END. Returns the number of passes it saw. With <paramref name="digests"/> (a verified
    /// migration) every RAM record is followed, DIGEST records are compared and END checks the chunks without one;
    /// once a channel's digests began, no RAM record may follow (they describe its final contents). A channel whose
    /// POSTCOPY_START arrives returns there: the postcopy phase reads on.
    /// </summary>
    private static int LoadChannel(RecordReader reader, int channel, IMigrationTarget target, List<StateSection> sections, Action<uint> passEnded, PostcopySwitch postcopy, DestinationDigests? digests)
    {
        // Page data straight into the guest's memory where its backing allows: the guest cannot run before every
        // channel has loaded cleanly, and a bad record fails the whole load. Not after the switch to postcopy.
        var blocks = target.Blocks;
        reader.Landing = (block, offset, length) => blocks[block].LoadSpan(offset, length);
        try
        {
            return LoadRecords(reader, channel, target, sections, passEnded, postcopy, digests);
        }
        finally
        {
            reader.Landing = null;
        }
    }

    private static int LoadRecords(RecordReader reader, int channel, IMigrationTarget target, List<StateSection> sections, Action<uint> passEnded, PostcopySwitch postcopy, DestinationDigests? digests)
    {
        var passes = 0;
        var digested = false;
        while (true)
        {
            var record = reader.ReadRecord();
            if (digested && record.Type is RecordType.Pages or RecordType.ZeroRun or RecordType.BalloonBitmap or RecordType.PassEnd)
                throw new StreamFormatException($"channel {channel}: a {record.Type} record after the channel's digests (they describe the final memory)");
            switch (record.Type)
            {
                case RecordType.End:
                    digests?.CheckRest(channel);
                    return passes;
                case RecordType.Digest:
                    if (digests is null)
                        throw new StreamFormatException($"channel {channel}: a DIGEST record, but verification (capability verify) was not negotiated");
                    digested = true;
                    digests.Check(record, channel);
                    break;
                case RecordType.KeepAlive:
                    break;
                case RecordType.PassEnd:
                    if (record.Pass != passes + 1)
                        throw new StreamFormatException($"channel {channel}: pass {record.Pass} ended after pass {passes}");
                    passes++;
                    passEnded(record.Pass);
                    break;
                case RecordType.State:
                    if (channel != 0)
                        throw new StreamFormatException($"channel {channel}: state section '{record.StateName}' outside channel 0");
                    lock (sections)
                        sections.Add(new StateSection(record.StateKind, record.StateIndex, record.StateName, record.Data.ToArray()));
                    break;
                case RecordType.BalloonBitmap:
                    target.ApplyBalloonBitmap(record.Block, record.PageOffset / Page.Size, record.Data.Span);
                    digests?.Loaded(record);
                    break;
                case RecordType.OwedPages:
                case RecordType.PostcopyStart:
                    if (postcopy.Take(record, channel))
                        return passes; // this channel's precopy ends here; the postcopy phase reads on
                    break;
                default:
                    RamLoader.Apply(record, target.Blocks);
                    digests?.Loaded(record);
                    break;
            }
        }
    }
}
