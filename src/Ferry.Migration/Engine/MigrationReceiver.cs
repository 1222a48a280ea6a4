using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>What a destination loaded.</summary>
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
    double ResumeMs = 0);

/// <summary>
/// The destination side: accepts channel 0, checks the header against its own RAM blocks and answers with the
/// capabilities it accepts, accepts the other channels (each must name this session and a free channel index),
/// then loads every channel on its own thread straight into guest RAM. State sections (channel 0 only) are
/// restored after every channel has reached END; then the guest resumes and the source is told. Any fault, on any
/// channel, fails the whole load: the reason goes back to the source and the caller gets a
/// <see cref="MigrationException"/>; the guest was never resumed.
/// </summary>
public static class MigrationReceiver
{
    private static readonly TimeSpan ChannelJoinTimeout = TimeSpan.FromSeconds(10);

    /// <summary>Waits (until <paramref name="cancel"/>) for a source, then loads its stream into <paramref name="target"/>.</summary>
    public static IncomingReport Receive(IMigrationTarget target, IChannelListener listener, CancellationToken cancel)
    {
        var first = listener.AcceptAsync(cancel).GetAwaiter().GetResult();
        var clock = Stopwatch.StartNew();
        var streams = new List<System.IO.Stream> { first };
        var control = first;
        try
        {
            var local = target.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray();
            var reader0 = new RecordReader(new BufferedStream(control, 1 << 20), local);
            var header = reader0.ReadHeader();
            var accepted = (StreamCapabilities)header.Capabilities & StreamCapabilities.All;
            ReturnPath.WriteAccept(control, (ulong)accepted);
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
                    try
                    {
                        ReturnPath.WritePassLoaded(control, pass);
                    }
                    catch (Exception e) when (e is IOException or ObjectDisposedException)
                    {
                        // The source's side is gone: reading the channels will say why (truncated, reset), which is
                        // the error worth reporting, not this advisory message that could not be delivered.
                    }
                }
            }
            // One-time restore work, overlapped with the pages instead of inside the downtime.
            var prepared = Task.Run(target.PrepareRestore, cancel);

            var readers = new RecordReader[header.Channels];
            readers[0] = reader0;
            for (var i = 1; i < header.Channels; i++)
            {
                var stream = listener.AcceptAsync(cancel).WaitAsync(ChannelJoinTimeout, cancel).GetAwaiter().GetResult();
                streams.Add(stream);
                var buffered = new BufferedStream(stream, 1 << 20);
                var index = ChannelHello.Read(buffered, header.SessionId, header.Channels);
                if (readers[index] is not null)
                    throw new StreamFormatException($"channel {index} joined twice");
                readers[index] = new RecordReader(buffered, local);
                readers[index].AdoptHeader(header);
            }

            var sections = new List<StateSection>();
            Exception? firstError = null;
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
                        passes[channel] = Load(readers[channel], channel, target, sections, PassEnded);
                        lastByte[channel] = Stopwatch.GetTimestamp();
                    }
                    catch (Exception e)
                    {
                        // The first fault is the reason; the others are mostly its echo (streams closed below).
                        if (Interlocked.CompareExchange(ref firstError, e, null) is null)
                        {
                            foreach (var s in streams.Skip(1))
                                s.Dispose();
                        }
                    }
                })
                { Name = $"migration-load{c}", IsBackground = true };
                threads[c].Start();
            }
            foreach (var thread in threads)
                thread.Join();
            if (firstError is not null)
                throw firstError;
            var loaded = Stopwatch.GetTimestamp();
            prepared.GetAwaiter().GetResult();
            var restoreStart = Stopwatch.GetTimestamp();
            target.RestoreState(sections);
            var restored = Stopwatch.GetTimestamp();
            target.ResumeGuest();
            var resumed = Stopwatch.GetTimestamp();
            lock (passEnds)
                ReturnPath.WriteResumed(control);
            var totals = readers.Aggregate((Data: 0UL, Zero: 0UL, Ballooned: 0UL), (t, r) => (t.Data + r.Totals.Pages, t.Zero + r.Totals.ZeroPages, t.Ballooned + r.Totals.BalloonedPages));
            return new IncomingReport(
                header.Channels, totals.Data, totals.Zero, totals.Ballooned, readers.Sum(r => r.BytesRead), passes.Max(),
                clock.Elapsed.TotalMilliseconds, Stopwatch.GetElapsedTime(lastByte.Max(), Stopwatch.GetTimestamp()).TotalMilliseconds,
                Stopwatch.GetElapsedTime(restoreStart, restored).TotalMilliseconds, Stopwatch.GetElapsedTime(restored, resumed).TotalMilliseconds);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var (kind, message) = e switch
            {
                StreamFormatException or InvalidDataException => (MigrationErrorKind.InvalidStream, $"bad migration stream: {e.Message}"),
                TimeoutException => (MigrationErrorKind.Timeout, $"a migration channel did not join within {ChannelJoinTimeout.TotalSeconds} s"),
                IOException => (MigrationErrorKind.ChannelFailed, $"migration connection lost: {e.Message}"),
                OperationCanceledException => (MigrationErrorKind.Cancelled, "migration load cancelled"),
                _ => (MigrationErrorKind.Internal, $"{e.GetType().Name}: {e.Message}"),
            };
            try
            {
                ReturnPath.WriteFailed(control, message);
            }
            catch (Exception)
            {
                // The source is gone; nobody to tell.
            }
            throw new MigrationException(kind, message, e);
        }
        finally
        {
            foreach (var stream in streams)
                stream.Dispose();
        }
    }

    /// <summary>Loads one channel until its END. Returns the number of passes it saw.</summary>
    private static int Load(RecordReader reader, int channel, IMigrationTarget target, List<StateSection> sections, Action<uint> passEnded)
    {
        var passes = 0;
        while (true)
        {
            var record = reader.ReadRecord();
            switch (record.Type)
            {
                case RecordType.End:
                    return passes;
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
                    break;
                default:
                    RamLoader.Apply(record, target.Blocks);
                    break;
            }
        }
    }
}
