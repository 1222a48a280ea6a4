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

    /// <summary>The guest powered off, panicked, faulted or was stopped; final.</summary>
    Shutdown,
}
