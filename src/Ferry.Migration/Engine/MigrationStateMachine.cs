namespace Ferry.Migration.Engine;

/// <summary>
/// A migration's status and the rules for changing it: None → Setup → Active → Device → Completed, or Failed or
/// Cancelled from anywhere before the end; with postcopy Active → PostcopyActive ⇄ PostcopyPaused → Completed or
/// Failed (a cancel is refused once postcopy began: the guest's memory is split between the hosts). A cancel is accepted until the switch-over begins (Device) and marks
/// Cancelling at once; from Cancelling only Cancelled or Failed follow, so the engine moving on cannot undo it (it
/// would then report the cancel's broken channels as a failure). Thread-safe; <see cref="Changed"/> is raised
/// outside the lock.
/// </summary>
internal sealed class MigrationStateMachine
{
    private readonly object _gate = new();
    private MigrationStatus _status = MigrationStatus.None;

    public event Action<MigrationStatus>? Changed;

    public MigrationStatus Status
    {
        get
        {
            lock (_gate)
                return _status;
        }
    }

    /// <summary>Moves to <paramref name="status"/> unless a cancel got there first (see the class remarks).</summary>
    public void MoveTo(MigrationStatus status)
    {
        lock (_gate)
        {
            if (_status == status)
                return;
            if (_status == MigrationStatus.Cancelling && status is not (MigrationStatus.Cancelled or MigrationStatus.Failed))
                return;
            _status = status;
        }
        Changed?.Invoke(status);
    }

    /// <summary>Marks Cancelling; false (and nothing changes) once the switch-over has begun or the migration ended.</summary>
    public bool TryCancel()
    {
        lock (_gate)
        {
            if (_status is MigrationStatus.Device or MigrationStatus.Completed or MigrationStatus.Failed or MigrationStatus.Cancelled
                or MigrationStatus.PostcopyActive or MigrationStatus.PostcopyPaused)
                return false;
            _status = MigrationStatus.Cancelling;
        }
        Changed?.Invoke(MigrationStatus.Cancelling);
        return true;
    }
}
