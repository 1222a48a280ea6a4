using Ferry.Kvm;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// The switch from precopy to postcopy (docs/migration.md, Postcopy): asked for by migrate-start-postcopy or decided
/// by <see cref="ConvergencePolicy"/>; then <see cref="PostcopySource"/> serves the destination until it has every
/// owed page, through any number of postcopy-paused periods and recoveries.
/// </summary>
public sealed partial class PrecopyMigration
{
    private volatile bool _postcopyRequested;
    private PostcopySource? _postcopy;

    /// <summary>A live pass stops at its next chunk once postcopy is asked for (the rest of it is owed instead).</summary>
    private bool PassCutShort => _postcopyRequested && _state.Status == MigrationStatus.Active;

    /// <summary>
    /// migrate-start-postcopy: switch to postcopy after the pass now running (cut short). Needs capability
    /// postcopy-ram and a destination (not a file). Harmless once postcopy began or the migration ended.
    /// </summary>
    public void StartPostcopy()
    {
        if (!_capabilities.PostcopyRam)
            throw new InvalidOperationException("Enable postcopy with migrate-set-capabilities (postcopy-ram) before the start of migration");
        if (_output is not null and not ChannelOutput)
            throw new InvalidOperationException($"postcopy needs a destination that runs the guest, not {_output.Description}");
        _postcopyRequested = true;
    }

    /// <summary>
    /// migrate with resume: reconnects a postcopy-paused migration through <paramref name="connector"/> (the
    /// destination has been told to listen there with migrate-recover). Returns at once; the migration thread does
    /// the rest, and goes back to postcopy-paused if the reconnection fails.
    /// </summary>
    public void ResumePostcopy(IChannelConnector connector)
    {
        var postcopy = _postcopy ?? throw new InvalidOperationException("no postcopy migration to resume (it never switched to postcopy)");
        postcopy.Resume(connector);
    }

    private MigrationStats WithPostcopy(MigrationStats stats)
    {
        if (_postcopy is not { } postcopy)
            return stats;
        var figures = postcopy.Stats();
        return stats with { Postcopy = figures, TransferredBytes = stats.TransferredBytes + postcopy.BytesBesidesFirstOutput };
    }

    /// <summary>
    /// Pauses the guest and hands it over: the owed pages (the pass's pages after the last sync, the balloon and
    /// hints), the balloon's last changes, the state. Returns when the destination has every owed page; throws
    /// (the guest resumed here) when the destination failed before running the guest, or (the guest left paused)
    /// when a paused postcopy is abandoned.
    /// </summary>
    private MigrationStats RunPostcopy(ref bool paused)
    {
        var output = _output as ChannelOutput
            ?? throw new MigrationException(MigrationErrorKind.OutputFailed, $"postcopy needs a destination that runs the guest, not {_output!.Description}");
        _state.MoveTo(MigrationStatus.PostcopyActive);
        var postcopy = _postcopy = new PostcopySource(_source, output, _sinks, _scanner, _counters, _parameters, _capabilities, _state, _clock);
        try
        {
            return RunPostcopy(postcopy, output, ref paused);
        }
        finally
        {
            postcopy.Close();
        }
    }

    private MigrationStats RunPostcopy(PostcopySource postcopy, ChannelOutput output, ref bool paused)
    {
        // Connected while the guest still runs, so no connection is set up inside the downtime.
        postcopy.ConnectUrgent(_cancel.Token);

        var pauseStart = _clock.Elapsed;
        _hints?.Finish();
        _source.PauseGuest();
        paused = true;
        var pausedAt = _clock.Elapsed;
        var owed = (ulong)SyncAndMask();
        var synced = _clock.Elapsed;
        // The destination's balloon must match the device state it is about to restore; every precopy pass is loaded
        // (PASS_LOADED), so channel 0 can carry every chunk's last change.
        var blocks = _source.Blocks;
        for (var b = 0; b < blocks.Count; b++)
        {
            for (long chunk = 0; chunk < (long)Page.ChunksFor(blocks[b].PageCount); chunk++)
                _balloon!.SendDelta(_sinks[0], b, chunk);
        }
        var balloonSent = _clock.Elapsed;
        var state = _source.SaveState();
        var saved = _clock.Elapsed;
        postcopy.Run(_pending, owed, state, pauseStart);

        var running = postcopy.RunningAt ?? _clock.Elapsed;
        _counters.Completed(
            (running - pauseStart).TotalMilliseconds,
            new DowntimePhases(Ms(pauseStart, pausedAt), Ms(pausedAt, synced), Ms(synced, balloonSent), VerifyMs: 0, Ms(balloonSent, saved), Ms(saved, running), 0));
        output.Finish();
        _clock.Stop();
        Cleanup();
        _state.MoveTo(MigrationStatus.Completed);
        return Snapshot();
    }
}
