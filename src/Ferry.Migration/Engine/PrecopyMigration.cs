using System.Diagnostics;
using System.Numerics;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>A migration that failed or was cancelled; the message says why. The source VM is running again.</summary>
public sealed class MigrationException : Exception
{
    public MigrationException() { }

    public MigrationException(string message) : base(message) { }

    public MigrationException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// The source side of a precopy live migration (docs/migration.md). Dirty logging is on for the whole migration.
/// Pass 1 sends the memfd data extents; every later pass sends what the merged dirty log reports. Pages in a
/// trusted balloon are never sent (the bitmap goes instead), free pages the guest hints are dropped from the pass,
/// zero pages go as zero runs. RAM is cut into 2 MiB chunks and chunk c always travels on channel c mod N, so a
/// page's newer copy can never overtake its older one and the channels need no synchronisation. The guest is
/// paused only for the last pass and the state; if anything fails before the destination reports the guest
/// running, the source guest runs on as if nothing happened.
/// </summary>
public sealed class PrecopyMigration : IDisposable
{
    /// <summary>Pages per chunk: 2 MiB, 8 bitmap words, one BALLOON_BITMAP record of 64 bytes.</summary>
    public const int ChunkPages = 512;
    private const int ChunkWords = ChunkPages / 64;

    private readonly IMigrationSource _source;
    private readonly MigrationParameters _parameters;
    private readonly MigrationCapabilities _capabilities;
    private readonly BandwidthLimiter _limiter;
    private readonly CancellationTokenSource _cancel = new();
    private readonly Stopwatch _clock = new();
    private readonly List<PassReport> _passes = [];
    private readonly object _statsGate = new();

    private PageSet[] _pending = [];      // pages still to send in this pass; consumed word by word
    private PageSet[] _balloon = [];      // the trusted balloon bitmap as of this pass
    private PageSet[] _balloonSent = [];  // what the destination has been told
    private IMigrationOutput? _output;
    private IReadOnlyList<IPageSink> _sinks = [];
    private volatile bool _acceptHints;
    private bool _trustBalloon, _useHints;

    private MigrationStatus _status = MigrationStatus.None;
    private string? _error, _notConverging;
    private string _balloonSkip = "", _freePageHint = "";
    private double _setupMs, _expectedDowntimeMs, _dirtyRate;
    private DowntimePhases? _downtime;
    private double? _downtimeMs;
    private long _remainingBytes, _syncCount;
    private long _normalPages, _zeroPages, _untouchedPages, _balloonedPages, _hintedPages, _balloonedSent;
    private int _throttle;

    public PrecopyMigration(IMigrationSource source, MigrationParameters parameters, MigrationCapabilities capabilities)
    {
        parameters.Validate();
        _source = source;
        _parameters = parameters;
        _capabilities = capabilities;
        _limiter = new BandwidthLimiter(parameters.MaxBandwidth);
    }

    /// <summary>Raised on every status change (from the migration thread).</summary>
    public event Action<MigrationStatus>? StatusChanged;

    /// <summary>Raised after every pass (from the migration thread).</summary>
    public event Action<PassReport>? PassCompleted;

    public MigrationStatus Status
    {
        get
        {
            lock (_statsGate)
                return _status;
        }
    }

    /// <summary>Changes max-bandwidth while the migration runs (as QEMU's migrate-set-parameters does).</summary>
    public void SetMaxBandwidth(long bytesPerSecond) => _limiter.BytesPerSecond = bytesPerSecond;

    /// <summary>Asks the migration to stop; the source keeps running. Ignored once the switch-over has begun.</summary>
    public void Cancel()
    {
        lock (_statsGate)
        {
            if (_status is MigrationStatus.Device or MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled)
                return;
            _status = MigrationStatus.Cancelling;
        }
        StatusChanged?.Invoke(MigrationStatus.Cancelling);
        _cancel.Cancel();
        // Writers blocked on a full socket only notice when their stream goes away.
        _output?.Abort(keepControl: false);
    }

    public void Dispose() => _cancel.Dispose();

    public MigrationStats Snapshot()
    {
        lock (_statsGate)
        {
            var transferred = _sinks.Sum(c => c.BytesWritten);
            var seconds = _clock.Elapsed.TotalSeconds;
            return new MigrationStats
            {
                Status = _status,
                Error = _error,
                TotalTimeMs = _clock.Elapsed.TotalMilliseconds,
                SetupTimeMs = _setupMs,
                DowntimeMs = _downtimeMs,
                Downtime = _downtime,
                ExpectedDowntimeMs = _expectedDowntimeMs,
                TransferredBytes = transferred,
                RemainingBytes = _remainingBytes,
                TotalBytes = (long)_source.Blocks.Aggregate(0UL, (s, b) => s + b.Size),
                NormalPages = Interlocked.Read(ref _normalPages),
                ZeroPages = Interlocked.Read(ref _zeroPages),
                UntouchedPages = _untouchedPages,
                BalloonedPages = _balloonedPages,
                HintedPages = Interlocked.Read(ref _hintedPages),
                BalloonedPagesSent = _balloonedSent,
                DirtySyncCount = _syncCount,
                DirtyPagesRate = _dirtyRate,
                Mbps = seconds > 0 ? transferred * 8 / seconds / 1e6 : 0,
                ThrottlePercent = _throttle,
                Channels = _sinks.Count,
                BalloonSkip = _balloonSkip,
                FreePageHint = _freePageHint,
                NotConverging = _notConverging,
                Passes = [.. _passes],
            };
        }
    }

    /// <summary>
    /// Runs the migration to the end. Returns the final statistics once the destination reports the guest running;
    /// throws <see cref="MigrationException"/> (the source running again) on failure or cancel.
    /// </summary>
    public MigrationStats Run(IChannelConnector connector)
    {
        using var output = new ChannelOutput(connector, _capabilities.Multifd ? _parameters.MultifdChannels : 1);
        return Run(output);
    }

    /// <summary>Runs the migration into any output (channels to a destination, a snapshot file).</summary>
    public MigrationStats Run(IMigrationOutput output)
    {
        _output = output;
        _clock.Start();
        var paused = false;
        // A snapshot of a running guest resumes it right after the switch-over; a paused one stays paused.
        var resumeAfter = output.SourceRunsOn && !_source.IsPaused;
        try
        {
            SetStatus(MigrationStatus.Setup);
            _sinks = output.Open(_source.Blocks, _cancel.Token);
            _source.PrepareSwitchover();
            _source.SetDirtyLogging(true);
            PrepareFirstPass();
            lock (_statsGate)
                _setupMs = _clock.Elapsed.TotalMilliseconds;
            SetStatus(MigrationStatus.Active);

            var pass = 1;
            var dirtyHighCount = 0;
            while (true)
            {
                var report = SendPass(pass, finalPass: false);
                StopHints();
                var dirtyPages = SyncAndMask();
                var seconds = Math.Max(report.DurationMs / 1000, 1e-6);
                var bandwidth = report.Bytes >= 1 << 20 ? report.Bytes / seconds : Math.Max(_passes.Count > 0 ? _passes[^1].BandwidthBytesPerSecond : 0, report.Bytes / seconds);
                if (bandwidth <= 0)
                    bandwidth = _limiter.BytesPerSecond > 0 ? _limiter.BytesPerSecond : 100 << 20;
                var remaining = dirtyPages * Page.Size;
                var expectedMs = remaining / bandwidth * 1000;
                var dirtyRate = dirtyPages / seconds;
                report = report with
                {
                    DirtyPagesAfter = dirtyPages,
                    DirtyPagesPerSecond = dirtyRate,
                    BandwidthBytesPerSecond = bandwidth,
                    ExpectedDowntimeMs = expectedMs,
                    ThrottlePercent = _throttle,
                };
                lock (_statsGate)
                {
                    _passes.Add(report);
                    _remainingBytes = remaining;
                    _expectedDowntimeMs = expectedMs;
                    _dirtyRate = dirtyRate;
                }
                PassCompleted?.Invoke(report);
                _cancel.Token.ThrowIfCancellationRequested();
                // Pass 1's dirty set is the odd one: it holds every page the guest touched since logging began (on
                // PVM even a read marks a page once), so for an idle guest it is most of what pass 1 sent. A second
                // live pass takes those pages out of the downtime; later syncs show only real writes.
                var secondPassWorthIt = pass == 1 && dirtyPages > 0 && !_source.IsPaused;
                if (expectedMs <= _parameters.DowntimeLimitMs && !secondPassWorthIt)
                    break;

                // Not converging yet. QEMU's auto-converge rule: when the bytes dirtied during a pass exceed the
                // threshold share of the bytes sent in it, twice in a row, throttle (further).
                var why = $"pass {pass}: expected downtime {expectedMs:F0} ms is over downtime-limit {_parameters.DowntimeLimitMs} ms " +
                          $"({dirtyPages} dirty pages, dirty rate {dirtyRate * Page.Size / (1 << 20):F0} MiB/s, bandwidth {bandwidth / (1 << 20):F0} MiB/s)";
                if (remaining * 100.0 > report.Bytes * (double)_parameters.ThrottleTriggerThreshold)
                    dirtyHighCount++;
                else
                    dirtyHighCount = 0;
                if (_capabilities.AutoConverge && dirtyHighCount >= 2)
                {
                    dirtyHighCount = 0;
                    _throttle = _throttle == 0 ? _parameters.CpuThrottleInitial : Math.Min(_parameters.MaxCpuThrottle, _throttle + _parameters.CpuThrottleIncrement);
                    _source.SetThrottle(_throttle);
                    why += $"; auto-converge throttles the vCPUs to {_throttle}%";
                }
                else if (!_capabilities.AutoConverge)
                {
                    why += "; auto-converge is off, so the migration keeps iterating";
                }
                lock (_statsGate)
                    _notConverging = why;
                StartHints();
                pass++;
            }

            // Switch-over: the guest stops for the last pass and its state.
            SetStatus(MigrationStatus.Device);
            var pauseStart = _clock.Elapsed;
            if (_useHints)
                _source.Balloon!.FinishHinting();
            _source.PauseGuest();
            paused = true;
            var paused1 = _clock.Elapsed;
            var finalDirty = SyncAndMask();
            var synced = _clock.Elapsed;
            var final = SendPass(pass + 1, finalPass: true) with { DirtyPagesAfter = finalDirty };
            lock (_statsGate)
                _passes.Add(final);
            var sent = _clock.Elapsed;
            var state = _source.SaveState();
            var saved = _clock.Elapsed;
            output.Complete(state, TimeSpan.FromMilliseconds(_parameters.SwitchoverTimeoutMs));
            var completed = _clock.Elapsed;
            if (resumeAfter)
            {
                // A snapshot: the guest has nothing more to give, so it runs on (unthrottled) while the output
                // makes its copy final.
                if (_throttle != 0)
                {
                    _throttle = 0;
                    _source.SetThrottle(0);
                }
                _source.ResumeGuest();
                paused = false;
            }
            lock (_statsGate)
            {
                var end = _clock.Elapsed;
                _downtimeMs = (end - pauseStart).TotalMilliseconds;
                static double Ms(TimeSpan from, TimeSpan to) => (to - from).TotalMilliseconds;
                _downtime = new DowntimePhases(
                    Ms(pauseStart, paused1), Ms(paused1, synced), Ms(synced, sent), Ms(sent, saved), Ms(saved, completed), Ms(completed, end));
                _remainingBytes = 0;
                _notConverging = null;
            }
            output.Finish();
            _clock.Stop();
            Cleanup();
            SetStatus(MigrationStatus.Completed);
            return Snapshot();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var cancelled = _cancel.IsCancellationRequested && Status == MigrationStatus.Cancelling;
            var message = cancelled ? "migration cancelled" : Describe(e);
            Cleanup();
            if (paused)
                _source.ResumeGuest();
            _clock.Stop();
            lock (_statsGate)
                _error = message;
            SetStatus(cancelled ? MigrationStatus.Cancelled : MigrationStatus.Failed);
            throw new MigrationException(message, e);
        }
    }

    private string Describe(Exception e)
    {
        // A destination that gave up usually said why before closing: prefer its reason.
        if (e is IOException or ObjectDisposedException && _output?.RemoteFailure() is { } reason)
            return $"the destination failed: {reason}";
        return e is MigrationException or StreamFormatException ? e.Message : $"{e.GetType().Name}: {e.Message}";
    }

    /// <summary>Pass 1's page set: the data extents of every block (never-touched pages are holes), balloon removed, hints started.</summary>
    private void PrepareFirstPass()
    {
        var blocks = _source.Blocks;
        _pending = [.. blocks.Select(b => new PageSet(b.PageCount))];
        _balloon = [.. blocks.Select(b => new PageSet(b.PageCount))];
        _balloonSent = [.. blocks.Select(b => new PageSet(b.PageCount))];
        var balloon = _source.Balloon;
        _trustBalloon = false;
        _balloonSkip = (balloon, _capabilities.BalloonSkip) switch
        {
            (null, _) => "off: the machine has no balloon",
            (_, false) => "off: capability ferry-balloon-skip is off",
            ({ DriverReady: false }, _) => "off: the guest's balloon driver is not ready",
            ({ MustTellHost: false }, _) => "off: the guest did not negotiate MUST_TELL_HOST, so ballooned pages are sent as ordinary pages",
            _ => "on",
        };
        _trustBalloon = _balloonSkip == "on";
        _useHints = false;
        _freePageHint = (balloon, _capabilities.FreePageHint) switch
        {
            (null, _) => "off: the machine has no balloon",
            (_, false) => "off: capability ferry-free-page-hint is off",
            ({ DriverReady: false }, _) or ({ CanHint: false }, _) => "off: the guest did not negotiate FREE_PAGE_HINT",
            ({ PoisonValue: not 0 }, _) => $"off: the guest poisons free pages with 0x{balloon.PoisonValue:X8}, so they must be sent",
            _ when _source.IsPaused => "off: the guest is paused (it cannot answer)",
            _ => "on",
        };
        _useHints = _freePageHint == "on";

        for (var b = 0; b < blocks.Count; b++)
        {
            foreach (var (offset, length) in blocks[b].DataExtents())
                _pending[b].AddRange(offset >> Page.Shift, Page.PagesFor(length));
        }
        // Pages never touched and not in the balloon: counted once, never read.
        var pending = _pending;
        if (balloon is not null)
        {
            for (var b = 0; b < blocks.Count; b++)
                balloon.CopyBalloonBitmap(b, _balloon[b]);
        }
        for (var b = 0; b < blocks.Count; b++)
        {
            var present = pending[b].Words;
            var ballooned = _balloon[b].Words;
            long untouched = 0, inBalloon = 0;
            for (var w = 0; w < present.Length; w++)
            {
                var valid = w == present.Length - 1 && blocks[b].PageCount % 64 != 0 ? (1UL << (int)(blocks[b].PageCount % 64)) - 1 : ulong.MaxValue;
                var skipMask = _trustBalloon ? ballooned[w] : 0;
                untouched += BitOperations.PopCount(~(present[w] | skipMask) & valid);
                inBalloon += BitOperations.PopCount(ballooned[w]);
            }
            _untouchedPages += untouched;
            if (_trustBalloon)
                _balloonedPages += inBalloon;
        }
        MaskBalloon(countSkipped: false);

        if (_useHints)
        {
            balloon!.Hinted += OnHinted;
            StartHints();
            // Give the guest its budget to hand over its free pages before pass 1 reads them; a guest that never
            // answers costs exactly this.
            var deadline = Stopwatch.GetTimestamp() + (long)(_parameters.HintBudgetMs / 1000.0 * Stopwatch.Frequency);
            while (!balloon.HintRunFinishedByGuest && Stopwatch.GetTimestamp() < deadline && !_cancel.IsCancellationRequested)
                Thread.Sleep(1);
        }
    }

    /// <summary>Removes trusted balloon pages from the pass (counting them), or counts ballooned pages sent anyway.</summary>
    private void MaskBalloon(bool countSkipped)
    {
        long skipped = 0, sentAnyway = 0;
        for (var b = 0; b < _pending.Length; b++)
        {
            var pending = _pending[b].Words;
            var ballooned = _balloon[b].Words;
            for (var w = 0; w < pending.Length; w++)
            {
                var overlap = pending[w] & ballooned[w];
                if (overlap == 0)
                    continue;
                if (_trustBalloon)
                {
                    skipped += BitOperations.PopCount(overlap);
                    pending[w] &= ~overlap;
                }
                else
                {
                    sentAnyway += BitOperations.PopCount(overlap);
                }
            }
        }
        lock (_statsGate)
        {
            if (countSkipped)
                _balloonedPages += skipped;
            _balloonedSent += sentAnyway;
        }
    }

    /// <summary>Stops hinting, merges the dirty log into the pass bitmaps, refreshes the balloon; returns the pages to send.</summary>
    private long SyncAndMask()
    {
        var blocks = _source.Blocks;
        for (var b = 0; b < blocks.Count; b++)
            _source.SyncDirtyLog(b, _pending[b]);
        if (_source.Balloon is { } balloon)
        {
            for (var b = 0; b < blocks.Count; b++)
                balloon.CopyBalloonBitmap(b, _balloon[b]);
        }
        MaskBalloon(countSkipped: true);
        lock (_statsGate)
            _syncCount++;
        return _pending.Sum(p => (long)p.Count());
    }

    private void StartHints()
    {
        if (!_useHints || _source.IsPaused)
            return;
        _acceptHints = true;
        _source.Balloon!.StartHinting();
    }

    /// <summary>Before every sync (seed 001, QEMU): once this returns no hint can clear a bit the sync sets.</summary>
    private void StopHints()
    {
        if (!_useHints)
            return;
        _source.Balloon!.StopHinting();
        _acceptHints = false;
    }

    /// <summary>A free page hint (vCPU thread): drop the pages from this pass unless they were already sent.</summary>
    private void OnHinted(int block, ulong offset, ulong length)
    {
        if (!_acceptHints || (uint)block >= (uint)_pending.Length || length == 0)
            return;
        var words = _pending[block].Words;
        var first = offset / (ulong)Page.Size;
        var end = Math.Min((offset + length + (ulong)Page.Size - 1) / (ulong)Page.Size, _pending[block].PageCount);
        long cleared = 0;
        for (var page = first; page < end;)
        {
            var w = (int)(page >> 6);
            var bit = (int)(page & 63);
            var count = (int)Math.Min((ulong)(64 - bit), end - page);
            var mask = (count == 64 ? ulong.MaxValue : ((1UL << count) - 1)) << bit;
            var before = Interlocked.And(ref words[w], ~mask);
            cleared += BitOperations.PopCount(before & mask);
            page += (ulong)count;
        }
        if (cleared != 0)
            Interlocked.Add(ref _hintedPages, cleared);
    }

    private PassReport SendPass(int pass, bool finalPass)
    {
        var start = _clock.Elapsed;
        var bytesBefore = _sinks.Sum(c => c.BytesWritten);
        var normalBefore = Interlocked.Read(ref _normalPages);
        var zeroBefore = Interlocked.Read(ref _zeroPages);
        var hintedBefore = Interlocked.Read(ref _hintedPages);
        var balloonedBefore = _balloonedPages;
        var errors = new Exception?[_sinks.Count];
        var threads = new Thread[_sinks.Count];
        for (var c = 0; c < _sinks.Count; c++)
        {
            var channel = c;
            threads[c] = new Thread(() =>
            {
                try
                {
                    SendChannel(channel);
                    _sinks[channel].EndPass((uint)pass);
                }
                catch (Exception e)
                {
                    errors[channel] = e;
                    // One channel failing dooms the pass: wake the others instead of letting them fill their sockets.
                    // Channel 0 stays open so the destination's reason for giving up can still be read from it.
                    _cancel.Cancel();
                    _output!.Abort(keepControl: true);
                }
            })
            { Name = $"migration-send{c}", IsBackground = true };
            threads[c].Start();
        }
        foreach (var thread in threads)
            thread.Join();
        if (Status == MigrationStatus.Cancelling)
            throw new OperationCanceledException();
        var first = errors.FirstOrDefault(e => e is not null and not OperationCanceledException) ?? errors.FirstOrDefault(e => e is not null);
        if (first is not null)
            throw first is OperationCanceledException ? new MigrationException("a channel failed", first) : first;
        // A live pass ends when the destination has it, not when it left the sockets: the guest runs while the
        // destination catches up, the pass's bandwidth is the end-to-end one, and no backlog is left for the downtime.
        if (!finalPass)
            _output!.WaitUntilLoaded(pass, TimeSpan.FromMilliseconds(_parameters.SwitchoverTimeoutMs));
        var elapsed = _clock.Elapsed - start;
        return new PassReport(
            pass,
            elapsed.TotalMilliseconds,
            _sinks.Sum(c => c.BytesWritten) - bytesBefore,
            Interlocked.Read(ref _normalPages) - normalBefore,
            Interlocked.Read(ref _zeroPages) - zeroBefore,
            Interlocked.Read(ref _hintedPages) - hintedBefore,
            _balloonedPages - balloonedBefore,
            0, 0, 0, 0, _throttle);
    }

    /// <summary>Sends the chunks this channel owns: balloon bitmap changes first, then the pass's pages.</summary>
    private void SendChannel(int channel)
    {
        var writer = _sinks[channel];
        var token = _cancel.Token;
        var blocks = _source.Blocks;
        var channels = _sinks.Count;
        long chunkBase = 0; // global chunk number of block b's first chunk
        for (var b = 0; b < blocks.Count; b++)
        {
            var block = blocks[b];
            var chunks = (long)((block.PageCount + ChunkPages - 1) / ChunkPages);
            // First chunk of this block that maps to this channel.
            var firstChunk = ((channel - chunkBase) % channels + channels) % channels;
            for (var chunk = firstChunk; chunk < chunks; chunk += channels)
            {
                token.ThrowIfCancellationRequested();
                if (_trustBalloon)
                    SendBalloonDelta(writer, b, chunk);
                SendChunkPages(writer, block, (ushort)b, chunk, token);
            }
            chunkBase += chunks;
        }
    }

    private void SendBalloonDelta(IPageSink writer, int block, long chunk)
    {
        var current = _balloon[block].Words;
        var sent = _balloonSent[block].Words;
        var firstWord = (int)(chunk * ChunkWords);
        var wordCount = Math.Min(ChunkWords, current.Length - firstWord);
        var now = current.Slice(firstWord, wordCount);
        var before = sent.Slice(firstWord, wordCount);
        if (now.SequenceEqual(before))
            return;
        writer.WriteBalloonBitmap((ushort)block, (ulong)firstWord * 64, System.Runtime.InteropServices.MemoryMarshal.AsBytes(now));
        now.CopyTo(before);
    }

    private void SendChunkPages(IPageSink writer, RamBlock block, ushort index, long chunk, CancellationToken token)
    {
        var words = _pending[index].Words;
        var firstWord = (int)(chunk * ChunkWords);
        var wordCount = Math.Min(ChunkWords, words.Length - firstWord);
        ulong runStart = 0, runLength = 0, zeroStart = 0, zeroLength = 0;
        long normal = 0, zero = 0;

        void FlushData()
        {
            if (runLength == 0)
                return;
            var bytes = (int)(runLength * Page.Size);
            _limiter.Acquire(bytes, token);
            writer.WritePages(index, runStart * Page.Size, block.Mapping.GetSpan(runStart * Page.Size, bytes));
            normal += (long)runLength;
            runLength = 0;
        }
        void FlushZero()
        {
            if (zeroLength == 0)
                return;
            writer.WriteZeroRun(index, zeroStart * Page.Size, (uint)zeroLength);
            zero += (long)zeroLength;
            zeroLength = 0;
        }

        for (var w = firstWord; w < firstWord + wordCount; w++)
        {
            if (Volatile.Read(ref words[w]) == 0)
                continue;
            // Take the word's pages out of the pass atomically: a hint arriving later finds them gone (already sent).
            var bits = Interlocked.Exchange(ref words[w], 0);
            while (bits != 0)
            {
                var bit = BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                var page = (ulong)w * 64 + (ulong)bit;
                if (ZeroPage.IsZero(block.Mapping.GetSpan(page * Page.Size, Page.Size)))
                {
                    if (runLength != 0)
                        FlushData();
                    if (zeroLength != 0 && zeroStart + zeroLength != page)
                        FlushZero();
                    if (zeroLength == 0)
                        zeroStart = page;
                    zeroLength++;
                    continue;
                }
                if (zeroLength != 0)
                    FlushZero();
                if (runLength != 0 && runStart + runLength != page)
                    FlushData();
                if (runLength == 0)
                    runStart = page;
                runLength++;
                if (runLength == StreamLimits.MaxPagesPerRecord)
                    FlushData();
            }
        }
        FlushData();
        FlushZero();
        if (normal != 0)
            Interlocked.Add(ref _normalPages, normal);
        if (zero != 0)
            Interlocked.Add(ref _zeroPages, zero);
    }

    private void SetStatus(MigrationStatus status)
    {
        lock (_statsGate)
        {
            if (_status == status)
                return;
            // A cancel that arrived during setup or a pass must not be undone by the engine moving on (it would then
            // report the cancel's broken channels as a failure): from Cancelling only the end states follow.
            if (_status == MigrationStatus.Cancelling && status is not (MigrationStatus.Cancelled or MigrationStatus.Failed))
                return;
            _status = status;
        }
        StatusChanged?.Invoke(status);
    }

    /// <summary>Puts the source back as it was before the migration (except the pause, which the caller undoes).</summary>
    private void Cleanup()
    {
        var balloon = _source.Balloon;
        if (_useHints && balloon is not null)
        {
            _acceptHints = false;
            balloon.Hinted -= OnHinted;
            try
            {
                balloon.StopHinting();
                balloon.FinishHinting();
            }
            catch (InvalidOperationException)
            {
                // The driver went away meanwhile; nothing to finish.
            }
        }
        if (_throttle != 0)
        {
            _throttle = 0;
            _source.SetThrottle(0);
        }
        try
        {
            _source.SetDirtyLogging(false);
        }
        catch (InvalidOperationException)
        {
            // The machine is gone (stopped under us); there is no log to turn off.
        }
        _output?.Abort(keepControl: false);
    }
}
