namespace Ferry.Machine;

/// <summary>Where a machine is in its lifecycle. QMP's query-status spells these as QEMU does (Ferry.Control).</summary>
public enum MachineStatus
{
    /// <summary>Created, vCPUs not started yet.</summary>
    Prelaunch,

    /// <summary>vCPUs running.</summary>
    Running,

    /// <summary>Every vCPU parked (pause, or started paused).</summary>
    Paused,

    /// <summary>Every vCPU parked while an incoming migration is awaited or loaded (QEMU's inmigrate).</summary>
    InMigrate,

    /// <summary>Every vCPU parked after the guest migrated away; `cont` would run it here again (QEMU's postmigrate).</summary>
    PostMigrate,

    /// <summary>The guest powered off, panicked, faulted or was stopped; final.</summary>
    Shutdown,
}

/// <summary>
/// Why a machine ended: the members of QEMU's ShutdownCause that Ferry has a use for, each with QEMU's meaning, so
/// that the SHUTDOWN event's reason is one of QEMU's values. Ferry.Control spells them.
/// </summary>
public enum ShutdownCause
{
    /// <summary>An error stopped the guest from running on: a vCPU exit the VMM cannot handle (KVM_EXIT_FAIL_ENTRY, INTERNAL_ERROR, a triple fault, an unknown exit).</summary>
    HostError,

    /// <summary>QMP quit, or the VMM ending a machine whose guest migrated away (ferry run --exit-after-migration, which quits for the script).</summary>
    HostQmpQuit,

    /// <summary>SIGINT or SIGTERM to the VMM.</summary>
    HostSignal,

    /// <summary>The guest powered off.</summary>
    GuestShutdown,

    /// <summary>The guest reported a panic.</summary>
    GuestPanic,
}
