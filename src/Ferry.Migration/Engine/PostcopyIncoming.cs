using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>
/// The destination's handle on an incoming migration's postcopy phase, for its operator (QMP migrate-recover, the
/// destination's status): where it stands, why it paused, its figures, and the recovery. Created by the caller of
/// <see cref="MigrationReceiver.Receive"/> and handed to it; thread-safe.
/// </summary>
public sealed class PostcopyIncoming
{
    private readonly object _gate = new();
    private MigrationStatus _status = MigrationStatus.None;
    private string? _pausedBecause;
    private IChannelListener? _recoverOn;
    private Func<PostcopyStats>? _stats;

    /// <summary>Raised on every postcopy status change of the destination (postcopy-active, postcopy-paused, completed, failed).</summary>
    public event Action<MigrationStatus>? StatusChanged;

    /// <summary>None until the source switched to postcopy.</summary>
    public MigrationStatus Status
    {
        get
        {
            lock (_gate)
                return _status;
        }
    }

    /// <summary>Why postcopy is (or last was) paused.</summary>
    public string? PausedBecause
    {
        get
        {
            lock (_gate)
                return _pausedBecause;
        }
    }

    /// <summary>The destination's postcopy figures so far (null before the switch).</summary>
    public PostcopyStats? Stats()
    {
        Func<PostcopyStats>? stats;
        lock (_gate)
            stats = _stats;
        return stats?.Invoke();
    }

    /// <summary>
    /// migrate-recover: a paused postcopy accepts the source's reconnection on <paramref name="listener"/> (which the
    /// receiver then owns and disposes). Throws <see cref="InvalidOperationException"/> unless postcopy-paused.
    /// </summary>
    public void Recover(IChannelListener listener)
    {
        ArgumentNullException.ThrowIfNull(listener);
        lock (_gate)
        {
            if (_status != MigrationStatus.PostcopyPaused)
                throw new InvalidOperationException($"migrate-recover needs a postcopy-paused incoming migration; it is {_status.ToQmp()}");
            if (_recoverOn is not null)
                throw new InvalidOperationException("a recovery is already waiting for the source");
            _recoverOn = listener;
            Monitor.PulseAll(_gate);
        }
    }

    internal void Attach(Func<PostcopyStats> stats)
    {
        lock (_gate)
            _stats = stats;
    }

    internal void MoveTo(MigrationStatus status, string? pausedBecause = null)
    {
        lock (_gate)
        {
            if (_status == status)
                return;
            _status = status;
            if (pausedBecause is not null)
                _pausedBecause = pausedBecause;
        }
        StatusChanged?.Invoke(status);
    }

    /// <summary>Waits (paused) for <see cref="Recover"/>'s listener; null when <paramref name="cancel"/> ends the wait.</summary>
    internal IChannelListener? WaitForRecovery(CancellationToken cancel)
    {
        using var registration = cancel.Register(() =>
        {
            lock (_gate)
                Monitor.PulseAll(_gate);
        });
        lock (_gate)
        {
            while (_recoverOn is null && !cancel.IsCancellationRequested)
                Monitor.Wait(_gate);
            var listener = _recoverOn;
            _recoverOn = null;
            return listener;
        }
    }
}
