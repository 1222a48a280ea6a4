using System.Diagnostics;
using System.Text.Json.Nodes;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;

namespace Ferry.Control;

/// <summary>Why an incoming migration cannot start; the message is QEMU's text where QEMU has one.</summary>
public sealed class IncomingRefusedException(string message) : Exception(message);

/// <summary>
/// How an incoming migration ended. <paramref name="Report"/> for a channel load, <paramref name="Restored"/> for a
/// file; <paramref name="ExitOnError"/>: the VMM should exit on a failure (migrate-incoming's exit-on-error).
/// </summary>
public sealed record IncomingOutcome(MigrationStatus Status, string Uri, string? Error, IncomingReport? Report, RestoreReport? Restored, bool ExitOnError, MigrationErrorKind ErrorKind = MigrationErrorKind.Internal);

/// <summary>
/// The destination's side of a migration, as QEMU's: `ferry run --incoming URI` or QMP's migrate-incoming (after
/// `--incoming defer`) start it once, on a machine started paused in <see cref="MachineStatus.InMigrate"/>. tcp:,
/// unix: and exec: load a stream (<see cref="MigrationReceiver"/>); file: (with mapped-ram) restores a snapshot.
/// The status goes setup (listening, or the command running) → active (the first channel joined; a file at once) →
/// completed (the guest runs) or failed, and each change is reported once through the callback, which emits
/// MIGRATION when the capabilities in force at the start have `events`. The destination's own parameters count:
/// ferry-channel-timeout-ms bounds how long a silent source is waited for. When the source switches to postcopy the
/// status follows the postcopy phase (postcopy-active ⇄ postcopy-paused) before it ends completed or failed; QMP's
/// migrate-recover acts on <see cref="Postcopy"/>.
/// </summary>
public sealed class IncomingMigration : IDisposable
{
    private readonly IMigratableMachine _machine;
    private readonly Action<MigrationStatus, MigrationCapabilities> _statusChanged;
    private readonly object _gate = new();
    private readonly CancellationTokenSource _cancel = new();
    private readonly TaskCompletionSource<IncomingOutcome> _finished = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Stopwatch _clock = new();
    private MigrationStatus _status = MigrationStatus.None;
    private MigrationUri? _uri;
    private MigrationCapabilities _capabilities = new();
    private IChannelListener? _listener;
    private IncomingOutcome? _outcome;
    private bool _started;

    /// <param name="statusChanged">Called once per status change, with the capabilities the migration started with.</param>
    public IncomingMigration(IMigratableMachine machine, Action<MigrationStatus, MigrationCapabilities> statusChanged)
    {
        _machine = machine;
        _statusChanged = statusChanged;
        // The end (completed, failed) is the load's to report, with its outcome; the phases in between are postcopy's.
        Postcopy.StatusChanged += status =>
        {
            if (status is MigrationStatus.PostcopyActive or MigrationStatus.PostcopyPaused)
                MoveTo(status);
        };
    }

    /// <summary>The postcopy phase of this incoming migration (its status, figures and migrate-recover).</summary>
    public PostcopyIncoming Postcopy { get; } = new();

    /// <summary>Completes when the incoming migration completed or failed (never before <see cref="Start"/>).</summary>
    public Task<IncomingOutcome> Finished => _finished.Task;

    /// <summary>Whether an incoming migration was started (it can be started once).</summary>
    public bool Started
    {
        get
        {
            lock (_gate)
                return _started;
        }
    }

    /// <summary>Where it listens: the URI given, or for tcp: port 0 the port it got.</summary>
    public string? Description
    {
        get
        {
            lock (_gate)
                return _listener?.Description ?? _uri?.ToString();
        }
    }

    /// <summary>
    /// Starts the incoming migration: checks it as QEMU does, listens (or runs the exec: command), reports setup,
    /// and loads on a thread of its own. Throws <see cref="IncomingRefusedException"/> with the reason when it
    /// cannot start; it may then be started again.
    /// </summary>
    public void Start(MigrationUri uri, MigrationParameters parameters, MigrationCapabilities capabilities, bool exitOnError = true)
    {
        ArgumentNullException.ThrowIfNull(uri);
        ArgumentNullException.ThrowIfNull(parameters);
        ArgumentNullException.ThrowIfNull(capabilities);
        lock (_gate)
        {
            if (_started)
                throw new IncomingRefusedException("The incoming migration has already been started");
            if (_machine.Status != MachineStatus.InMigrate)
                throw new IncomingRefusedException("'-incoming' was not specified on the command line");
            if (MigrationTransports.CheckIncoming(uri, capabilities) is { } refused)
                throw new IncomingRefusedException(refused);
            IChannelListener? listener = null;
            if (uri.Kind != MigrationUriKind.File)
            {
                try
                {
                    listener = MigrationTransports.Listen(uri, parameters);
                }
                catch (IOException e)
                {
                    throw new IncomingRefusedException(e.Message);
                }
            }
            else if (!File.Exists(uri.Path))
            {
                throw new IncomingRefusedException($"{uri}: no such file");
            }
            (_started, _uri, _capabilities, _listener) = (true, uri, capabilities, listener);
            _clock.Start();
        }
        MoveTo(MigrationStatus.Setup);
        var timeout = TimeSpan.FromMilliseconds(parameters.ChannelTimeoutMs);
        new Thread(() => Load(uri, timeout, exitOnError)) { Name = "migration-incoming", IsBackground = true }.Start();
    }

    private void Load(MigrationUri uri, TimeSpan timeout, bool exitOnError)
    {
        IncomingReport? report = null;
        RestoreReport? restored = null;
        string? error = null;
        var kind = MigrationErrorKind.Internal;
        try
        {
            if (uri.Kind == MigrationUriKind.File)
            {
                MoveTo(MigrationStatus.Active);
                restored = _machine.RestoreSnapshot(uri.Path);
            }
            else
            {
                using var listener = new FirstAccept(_listener!, () => MoveTo(MigrationStatus.Active));
                report = MigrationReceiver.Receive(_machine.CreateMigrationTarget(), listener, _cancel.Token, timeout, Postcopy);
            }
        }
        catch (MigrationException e)
        {
            (error, kind) = (e.Message, e.Kind);
        }
        catch (OperationCanceledException)
        {
            (error, kind) = ("interrupted while waiting", MigrationErrorKind.Cancelled);
        }
        catch (Exception e) when (e is IOException or InvalidDataException or UnauthorizedAccessException or Migration.Snapshot.SnapshotFormatException)
        {
            error = $"{uri}: {(e is UnauthorizedAccessException ? "permission denied" : e.Message)}";
            kind = e is IOException or UnauthorizedAccessException ? MigrationErrorKind.ChannelFailed : MigrationErrorKind.InvalidStream;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // This thread must not take the process down: whatever else went wrong fails the migration, named.
            error = $"{uri}: internal error: {e.Message}";
        }
        var status = error is null ? MigrationStatus.Completed : MigrationStatus.Failed;
        IncomingOutcome outcome;
        lock (_gate)
        {
            _clock.Stop();
            _outcome = outcome = new IncomingOutcome(status, uri.ToString(), error, report, restored, exitOnError, kind);
        }
        MoveTo(status);
        _finished.TrySetResult(outcome);
    }

    private void MoveTo(MigrationStatus status)
    {
        MigrationCapabilities capabilities;
        lock (_gate)
        {
            if (_status == status)
                return;
            _status = status;
            capabilities = _capabilities;
        }
        _statusChanged(status, capabilities);
    }

    /// <summary>query-migrate on the destination: QEMU's status (and error-desc), with what was loaded under "ferry".</summary>
    public JsonObject Query()
    {
        lock (_gate)
        {
            if (_status == MigrationStatus.None)
                return [];
            var ferry = new JsonObject
            {
                ["incoming"] = _listener?.Description ?? _uri?.ToString(),
                ["total-time-exact-ms"] = Math.Round(_clock.Elapsed.TotalMilliseconds, 3),
            };
            if (_outcome?.Report is { } r)
            {
                ferry["channels"] = r.Channels;
                ferry["passes"] = r.Passes;
                ferry["bytes"] = r.Bytes;
                ferry["data-pages"] = r.DataPages;
                ferry["zero-pages"] = r.ZeroPages;
                ferry["ballooned-pages"] = r.BalloonedPages;
                ferry["state-restore-ms"] = Math.Round(r.StateRestoreMs, 3);
                ferry["resume-ms"] = Math.Round(r.ResumeMs, 3);
                ferry["source-told-resumed"] = r.SourceToldResumed;
                if (r.VerifiedChunks > 0)
                    ferry["verified-chunks"] = r.VerifiedChunks;
            }
            if (_outcome?.Restored is { } f)
            {
                ferry["pages-loaded"] = f.PagesLoaded;
                ferry["bytes-read"] = f.BytesRead;
                ferry["ballooned-pages"] = f.BalloonedPages;
                ferry["state-sections"] = f.StateSections;
            }
            var result = new JsonObject { ["status"] = _status.ToQmp(), ["total-time"] = (long)_clock.Elapsed.TotalMilliseconds };
            if (_outcome?.Error is { } error)
            {
                result["error-desc"] = error;
                result["ferry-error-kind"] = MigrationQmpText.ErrorKind(_outcome.ErrorKind);
            }
            result["ferry"] = ferry;
            if ((_outcome?.Report?.Postcopy ?? Postcopy.Stats()) is { } postcopy)
                PostcopyCommands.AddStats(result, ferry, postcopy);
            return result;
        }
    }

    /// <summary>Gives up waiting (the VMM is ending): the listener closes; a load under way ends with the process.</summary>
    public void Dispose()
    {
        _cancel.Cancel();
        IChannelListener? listener;
        lock (_gate)
            listener = _listener;
        listener?.Dispose();
    }

    /// <summary>A listener that says once when the first channel joined (setup → active).</summary>
    private sealed class FirstAccept(IChannelListener inner, Action accepted) : IChannelListener
    {
        private int _fired;

        public string Description => inner.Description;

        public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
        {
            var stream = await inner.AcceptAsync(cancel).ConfigureAwait(false);
            if (Interlocked.Exchange(ref _fired, 1) == 0)
                accepted();
            return stream;
        }

        public void Dispose() => inner.Dispose();
    }
}
