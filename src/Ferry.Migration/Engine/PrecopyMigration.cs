using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// The source side of a precopy live migration (docs/migration.md). Dirty logging is on for the whole migration.
/// Pass 1 sends the memfd data extents; every later pass sends what the merged dirty log reports. Pages in a
/// trusted balloon are never sent (the bitmap goes instead, <see cref="BalloonMask"/>), free pages the guest hints
/// are dropped from the pass (<see cref="FreePageHintSession"/>), zero pages go as zero runs
/// (<see cref="PageScanner"/>). RAM is cut into 2 MiB chunks and chunk c always travels on channel c mod N, so a
/// page's newer copy can never overtake its older one and the channels need no synchronisation. After each pass
/// <see cref="ConvergencePolicy"/> decides: switch over, iterate or throttle. The guest is paused only for the last
/// pass and the state; if anything fails before the point of no return (<see cref="IMigrationOutput.HandedOver"/>:
/// the whole state and every END sent), the source guest runs on as if nothing happened. After it, only the
/// destination's own FAILED resumes the source; any other failure leaves it paused and says so
/// (<see cref="MigrationStats.DestinationMayBeRunning"/>), since the destination may be running the guest.
/// </summary>
public sealed partial class PrecopyMigration : IDisposable
{
    private readonly IMigrationSource _source;
    private readonly MigrationParameters _parameters;
    private readonly MigrationCapabilities _capabilities;
    private readonly BandwidthLimiter _limiter;
    private readonly PageScanner _scanner;
    private readonly CancellationTokenSource _cancel = new();
    private readonly Stopwatch _clock = new();
    private readonly MigrationStateMachine _state = new();
    private readonly MigrationCounters _counters = new();

    private PageSet[] _pending = [];      // pages still to send in this pass; consumed word by word
    private BalloonMask? _balloon;
    private FreePageHintSession? _hints;
    private GuestFreePages? _free;        // with ferry-verify: pages left out of the digests
    private SwitchoverDigests? _digests;  // with ferry-verify, once the output accepted it
    private IMigrationOutput? _output;
    private IReadOnlyList<IPageSink> _sinks = [];

    public PrecopyMigration(IMigrationSource source, MigrationParameters parameters, MigrationCapabilities capabilities)
    {
        parameters.Validate();
        _source = source;
        _parameters = parameters;
        _capabilities = capabilities;
        _limiter = new BandwidthLimiter(parameters.MaxBandwidth);
        _scanner = new PageScanner(_limiter);
    }

    /// <summary>Raised on every status change (from the migration thread).</summary>
    public event Action<MigrationStatus>? StatusChanged
    {
        add => _state.Changed += value;
        remove => _state.Changed -= value;
    }

    /// <summary>Raised after every pass (from the migration thread).</summary>
    public event Action<PassReport>? PassCompleted;

    public MigrationStatus Status => _state.Status;

    /// <summary>Changes max-bandwidth while the migration runs (as QEMU's migrate-set-parameters does).</summary>
    public void SetMaxBandwidth(long bytesPerSecond) => _limiter.BytesPerSecond = bytesPerSecond;

    /// <summary>Asks the migration to stop; the source keeps running. Ignored once the switch-over has begun.</summary>
    public void Cancel()
    {
        if (!_state.TryCancel())
        {
            // After the switch to postcopy a cancel can only give up a paused migration (the guest stays paused).
            _postcopy?.Abandon();
            return;
        }
        _cancel.Cancel();
        // Writers blocked on a full socket only notice when their stream goes away.
        _output?.Abort(keepControl: false);
    }

    public void Dispose() => _cancel.Dispose();

    public MigrationStats Snapshot()
    {
        var stats = WithPostcopy(_counters.ToStats(_state.Status, _clock.Elapsed, _sinks, (long)_source.Blocks.Aggregate(0UL, (s, b) => s + b.Size)));
        if (stats.Status != MigrationStatus.Active)
            return stats;
        // While a pass runs, what is left is what the pass has not taken yet (pass 1: the data extents not yet
        // sent), not the figure of the last sync: QEMU's remaining is meaningful from the first second.
        var pending = _pending;
        ulong left = 0;
        foreach (var set in pending)
            left += set.Count();
        var remaining = (long)left * Page.Size;
        // Before the first pass has a bandwidth, the rate so far stands in for it.
        var sendingMs = stats.TotalTimeMs - stats.SetupTimeMs;
        var bandwidth = _counters.LastBandwidth ?? (sendingMs > 0 ? stats.TransferredBytes / (sendingMs / 1000) : 0);
        return stats with
        {
            RemainingBytes = remaining,
            ExpectedDowntimeMs = bandwidth > 0 ? remaining / bandwidth * 1000 : stats.ExpectedDowntimeMs,
        };
    }

    /// <summary>
    /// Runs the migration to the end. Returns the final statistics once the destination reports the guest running;
    /// throws <see cref="MigrationException"/> (the source running again) on failure or cancel.
    /// </summary>
    public MigrationStats Run(IChannelConnector connector)
    {
        using var output = new ChannelOutput(connector, _parameters, _capabilities);
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
            _state.MoveTo(MigrationStatus.Setup);
            var setupStart = _clock.Elapsed;
            _sinks = output.Open(_source.Blocks, _cancel.Token);
            if (_capabilities.Verify && output.Verifies)
            {
                _free = new GuestFreePages(_source.Blocks);
                _digests = new SwitchoverDigests(_source.Blocks);
            }
            var opened = _clock.Elapsed;
            _source.PrepareSwitchover();
            var prepared = _clock.Elapsed;
            _source.SetDirtyLogging(true);
            var logging = _clock.Elapsed;
            var (extents, ballooned) = PrepareFirstPass();
            var setupEnd = _clock.Elapsed;
            _counters.SetupDone(setupEnd.TotalMilliseconds, new SetupPhases(
                Ms(setupStart, opened), Ms(opened, prepared), Ms(prepared, logging), Ms(logging, extents), Ms(extents, ballooned), Ms(ballooned, setupEnd)));
            _state.MoveTo(MigrationStatus.Active);

            var pass = 1;
            var convergence = new ConvergenceState(0, 0);
            while (true)
            {
                var report = SendPass(pass, finalPass: false);
                _hints?.Stop();
                var dirtyPages = SyncAndMask();
                var decision = ConvergencePolicy.Decide(
                    new PassMeasurement(pass, report.Bytes, report.DurationMs, dirtyPages, _counters.LastBandwidth ?? 0, _limiter.BytesPerSecond, _source.IsPaused, _postcopyRequested),
                    convergence, _parameters, _capabilities.AutoConverge, _capabilities.PostcopyRam);
                report = report with
                {
                    DirtyPagesAfter = dirtyPages,
                    DirtyPagesPerSecond = decision.DirtyPagesPerSecond,
                    BandwidthBytesPerSecond = decision.BandwidthBytesPerSecond,
                    ExpectedDowntimeMs = decision.ExpectedDowntimeMs,
                    ThrottlePercent = _counters.Throttle,
                };
                _counters.PassDone(report, decision.RemainingBytes);
                PassCompleted?.Invoke(report);
                _cancel.Token.ThrowIfCancellationRequested();
                if (decision.Action == ConvergenceAction.SwitchOver)
                    break;
                if (decision.Action == ConvergenceAction.StartPostcopy)
                    return RunPostcopy(ref paused);
                convergence = decision.Next;
                if (decision.Action == ConvergenceAction.Throttle)
                {
                    _counters.Throttle = decision.ThrottlePercent;
                    _source.SetThrottle(decision.ThrottlePercent);
                }
                _counters.NotConvergingBecause(decision.NotConverging);
                _hints?.Start();
                pass++;
            }

            // Switch-over: the guest stops for the last pass and its state.
            _state.MoveTo(MigrationStatus.Device);
            var pauseStart = _clock.Elapsed;
            _hints?.Finish();
            _source.PauseGuest();
            paused = true;
            var paused1 = _clock.Elapsed;
            var finalDirty = SyncAndMask();
            var synced = _clock.Elapsed;
            _counters.FinalPassDone(SendPass(pass + 1, finalPass: true) with { DirtyPagesAfter = finalDirty });
            var sent = _clock.Elapsed;
            var verified = SendDigests() ? _clock.Elapsed : sent;
            var state = _source.SaveState();
            var saved = _clock.Elapsed;
            output.Complete(state, TimeSpan.FromMilliseconds(_parameters.SwitchoverTimeoutMs));
            var completed = _clock.Elapsed;
            if (resumeAfter)
            {
                // A snapshot: the guest has nothing more to give, so it runs on (unthrottled) while the output
                // makes its copy final.
                Unthrottle();
                _source.ResumeGuest();
                paused = false;
            }
            var end = _clock.Elapsed;
            _counters.Completed(
                (end - pauseStart).TotalMilliseconds,
                new DowntimePhases(Ms(pauseStart, paused1), Ms(paused1, synced), Ms(synced, sent), Ms(sent, verified), Ms(verified, saved), Ms(saved, completed), Ms(completed, end)));
            output.Finish();
            _clock.Stop();
            Cleanup();
            _state.MoveTo(MigrationStatus.Completed);
            return Snapshot();
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            var cancelled = _cancel.IsCancellationRequested && Status == MigrationStatus.Cancelling;
            var remote = cancelled ? null : _output?.RemoteFailure();
            var (kind, message) = cancelled ? (MigrationErrorKind.Cancelled, "migration cancelled") : Describe(e, remote, _output?.ReturnPathFailure);
            // Past the point of no return the destination may run the guest; only its own FAILED (sent only before
            // it resumes anything) proves it does not. Two running copies are worse than a paused one.
            var stranded = paused && _output?.HandedOver == true && (remote is null || _postcopy?.RunningAt is not null);
            if (stranded)
            {
                message = $"{message}; the whole state was sent and the destination did not confirm the guest runs there: it may be running it, so this guest stays paused (postmigrate). Check the destination, then stop this VM, or resume it with 'cont' only if the destination does not run the guest";
            }
            Cleanup();
            if (paused && !stranded)
                _source.ResumeGuest();
            _clock.Stop();
            _counters.Failed(kind, message, stranded);
            _state.MoveTo(cancelled ? MigrationStatus.Cancelled : MigrationStatus.Failed);
            throw new MigrationException(kind, message, e, stranded);
        }
    }

    /// <summary>
    /// The reason a user reads (error-desc, the CLI): the destination's own reason whenever it sent one, since a
    /// local broken pipe is only its echo; never a .NET exception type name.
    /// </summary>
    internal static (MigrationErrorKind, string) Describe(Exception e, string? remoteFailure, Exception? returnPath = null)
    {
        while (e is AggregateException { InnerExceptions.Count: > 0 } aggregate)
            e = aggregate.InnerExceptions[0];
        if (e is MigrationException { Kind: MigrationErrorKind.DestinationRefused or MigrationErrorKind.DestinationFailed } known)
            return (known.Kind, known.Message);
        if (remoteFailure is not null)
            return (MigrationErrorKind.DestinationFailed, $"the destination failed: {remoteFailure}");
        // A silent destination: the senders only saw their channels aborted; the time-out is the reason.
        if (returnPath is TimeoutException silent && e is not MigrationException { Kind: MigrationErrorKind.Timeout })
            return (MigrationErrorKind.Timeout, silent.Message);
        return e switch
        {
            MigrationException m => (m.Kind, m.Message),
            StreamFormatException => (MigrationErrorKind.InvalidStream, e.Message),
            MigrationTlsException => (MigrationErrorKind.TlsRefused, e.Message),
            TimeoutException => (MigrationErrorKind.Timeout, $"timed out: {e.Message}"),
            ObjectDisposedException => (MigrationErrorKind.ChannelFailed, "a migration channel was closed under a sender"),
            IOException => (MigrationErrorKind.ChannelFailed, $"a migration channel broke: {e.Message}"),
            _ => (MigrationErrorKind.Internal, $"internal error: {e.Message}"),
        };
    }

    /// <summary>Pass 1's page set: the data extents of every block (never-touched pages are holes), balloon removed, hints started.</summary>
    private static double Ms(TimeSpan from, TimeSpan to) => (to - from).TotalMilliseconds;

    /// <summary>Pass 1's page sets, the balloon and the hint run; returns when the extents and the balloon were done.</summary>
    private (TimeSpan Extents, TimeSpan Balloon) PrepareFirstPass()
    {
        var blocks = _source.Blocks;
        _pending = [.. blocks.Select(b => new PageSet(b.PageCount))];
        var balloon = _source.Balloon;
        // Inflates and reports from now on may discard pages the destination still holds: left out of the digests.
        if (_free is not null && balloon is not null)
            balloon.Discarded += _free.Add;
        var balloonSkip = BalloonMask.Decide(balloon, _capabilities.BalloonSkip);
        var freePageHint = FreePageHintSession.Decide(balloon, _capabilities.FreePageHint, _source.IsPaused);
        _counters.SetModes(balloonSkip, freePageHint, balloon?.PoisonValue ?? 0);
        _balloon = new BalloonMask(blocks, balloonSkip);

        for (var b = 0; b < blocks.Count; b++)
        {
            foreach (var (offset, length) in blocks[b].DataExtents())
                _pending[b].AddRange(offset / Page.Size, Page.PagesFor(offset + length) - offset / Page.Size);
        }
        _digests?.AddHeld(_pending);
        var extents = _clock.Elapsed;
        // Pages never touched and not in the balloon: counted once, never read.
        _balloon.Refresh(balloon);
        _balloon.CountFirstPass(_pending, _counters);
        var ballooned = _clock.Elapsed;

        _hints = FreePageHintSession.Create(freePageHint, balloon, () => _source.IsPaused, _counters, _free);
        _hints?.Begin(_pending, _parameters.HintBudgetMs, _cancel.Token);
        return (extents, ballooned);
    }

    /// <summary>Merges the dirty log into the pass's page sets and refreshes the balloon; returns the pages to send.</summary>
    private long SyncAndMask()
    {
        var blocks = _source.Blocks;
        for (var b = 0; b < blocks.Count; b++)
            _source.SyncDirtyLog(b, _pending[b]);
        // Every pass takes all of its pages, so right after a sync the sets hold exactly what was written since.
        _free?.Written(_pending);
        _digests?.AddHeld(_pending);
        _balloon!.Refresh(_source.Balloon);
        _balloon.Mask(_pending, _counters, countSkipped: true);
        _counters.AddSync();
        long pages = 0;
        foreach (var set in _pending)
            pages += (long)set.Count();
        return pages;
    }

    private PassReport SendPass(int pass, bool finalPass)
    {
        var start = _clock.Elapsed;
        var bytesBefore = _sinks.Sum(c => c.BytesWritten);
        var before = _counters.Now;
        OnEveryChannel("migration-send", channel =>
        {
            SendChannel(channel);
            _sinks[channel].EndPass((uint)pass);
        });
        // A live pass ends when the destination has it, not when it left the sockets: the guest runs while the
        // destination catches up, the pass's bandwidth is the end-to-end one, and no backlog is left for the downtime.
        if (!finalPass)
            _output!.WaitUntilLoaded(pass, TimeSpan.FromMilliseconds(_parameters.SwitchoverTimeoutMs));
        var elapsed = _clock.Elapsed - start;
        var after = _counters.Now;
        return new PassReport(
            pass,
            elapsed.TotalMilliseconds,
            _sinks.Sum(c => c.BytesWritten) - bytesBefore,
            after.Normal - before.Normal,
            after.Zero - before.Zero,
            after.Hinted - before.Hinted,
            after.Ballooned - before.Ballooned,
            0, 0, 0, 0, _counters.Throttle);
    }

    /// <summary>Runs <paramref name="work"/> for every channel on its own thread; the first failure aborts them all and is thrown.</summary>
    private void OnEveryChannel(string name, Action<int> work)
    {
        Exception? cause = null;
        var errors = WorkerThreads.Run(_sinks.Count, name, work, failed: e =>
        {
            // The first failure in time is the cause; the others are mostly its echo (the abort below closes their
            // channels, so they fail with "closed"), and a lower channel's echo must not hide e.g. a full disk.
            Interlocked.CompareExchange(ref cause, e, null);
            // One channel failing dooms the pass: wake the others instead of letting them fill their sockets.
            // Channel 0 stays open so the destination's reason for giving up can still be read from it.
            _cancel.Cancel();
            _output!.Abort(keepControl: true);
        });
        if (Status == MigrationStatus.Cancelling)
            throw new OperationCanceledException();
        var first = cause is not null and not OperationCanceledException ? cause
            : errors.FirstOrDefault(e => e is not null and not OperationCanceledException) ?? errors.FirstOrDefault(e => e is not null);
        if (first is not null)
            throw first is OperationCanceledException ? new MigrationException(MigrationErrorKind.ChannelFailed, "a channel failed", first) : first;
    }

    /// <summary>
    /// With ferry-verify, inside the downtime after the last pass: every channel sends the digests of the chunks it
    /// carries, behind their last records, computed on all channels' threads at once. False without ferry-verify.
    /// </summary>
    private bool SendDigests()
    {
        if (_digests is null)
            return false;
        _digests.Prepare(_free!, _balloon!);
        OnEveryChannel("migration-verify", channel => _digests.SendChannel(channel, _sinks.Count, _sinks[channel], _cancel.Token));
        _counters.Verified(_digests.Chunks);
        return true;
    }

    /// <summary>Sends the chunks this channel owns: balloon bitmap changes first, then the pass's pages.</summary>
    private void SendChannel(int channel)
    {
        var sink = _sinks[channel];
        var token = _cancel.Token;
        var blocks = _source.Blocks;
        var channels = _sinks.Count;
        long chunkBase = 0; // global chunk number of block b's first chunk
        for (var b = 0; b < blocks.Count; b++)
        {
            var block = blocks[b];
            var chunks = (long)Page.ChunksFor(block.PageCount);
            for (var chunk = ChunkChannels.FirstOn(chunkBase, channel, channels); chunk < chunks; chunk += channels)
            {
                token.ThrowIfCancellationRequested();
                if (PassCutShort)
                    return;
                _balloon!.SendDelta(sink, b, chunk);
                var sent = _scanner.ScanChunk(_pending[b], block, (ushort)b, chunk, sink, token);
                _counters.AddSent(sent.DataPages, sent.ZeroPages);
            }
            chunkBase += chunks;
        }
    }

    private void Unthrottle()
    {
        if (_counters.Throttle == 0)
            return;
        _counters.Throttle = 0;
        _source.SetThrottle(0);
    }

    /// <summary>Puts the source back as it was before the migration (except the pause, which the caller undoes).</summary>
    private void Cleanup()
    {
        _hints?.End();
        if (_free is not null && _source.Balloon is { } balloon)
            balloon.Discarded -= _free.Add;
        Unthrottle();
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
