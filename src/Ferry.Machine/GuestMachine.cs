using Ferry.Devices;
using Ferry.Devices.Legacy;
using Ferry.Devices.Virtio;
using Ferry.Devices.Virtio.Balloon;
using Ferry.Interop.Kvm;
using Ferry.Kvm;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Machine;

/// <summary>What a host error was, where the VMM tells them apart (QEMU's ShutdownCause has one host-error for all).</summary>
public enum HostFault
{
    None,

    /// <summary>A vCPU exit the VMM cannot handle.</summary>
    Vcpu,

    /// <summary>Guest memory that was owed (a lazy restore) could not be brought in: the guest must not run on without it.</summary>
    Memory,
}

/// <summary>How a machine stopped: why (<paramref name="Cause"/>), and a line for the log (<paramref name="Message"/>: what the guest or the host said); <paramref name="Fault"/> tells host errors apart.</summary>
public sealed record MachineExit(ShutdownCause Cause, string Message, HostFault Fault = HostFault.None);

/// <summary>
/// One running VM: KVM objects, guest RAM, devices and a thread per vCPU. Built from a <see cref="MachineConfig"/>
/// with the guest image loaded and every vCPU at the guest's entry point, paused until <see cref="Start"/>.
/// </summary>
public sealed partial class GuestMachine : IDisposable, IVcpuExitHandler
{
    private static readonly TimeSpan PauseTimeout = TimeSpan.FromSeconds(5);

    private readonly KvmSystem _kvm;
    private readonly List<Vcpu> _vcpus = [];
    private readonly List<VcpuRunner> _runners = [];
    private readonly TaskCompletionSource<MachineExit> _exited = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Lock _stateLock = new();
    // Held for a whole pause or resume, so concurrent callers (QMP clients, migration) see each one complete.
    private readonly Lock _lifecycle = new();
    private readonly VcpuThrottle _throttle;
    private uint[]? _savedMsrs;
    private bool _started;
    private bool _paused;
    private MachineStatus _pausedAs = MachineStatus.Paused; // what a paused machine reports (paused, inmigrate, postmigrate)

    private readonly ILogger _log;

    private GuestMachine(MachineConfig config, KvmSystem kvm, VirtualMachine vm, GuestMemory memory, ISerialOutput console, ILoggerFactory loggers)
    {
        Config = config;
        Loggers = loggers;
        _log = loggers.CreateLogger<GuestMachine>();
        DeviceLog = new DeviceLog(loggers.CreateLogger<DeviceLog>());
        _kvm = kvm;
        Vm = vm;
        Memory = memory;
        _throttle = new VcpuThrottle(_runners);
        Idle = new IdlePort(config.Cpus);
        Serial = new Serial16550(console) { InputQueued = Idle.Wake };
        IoBus.Register(Serial16550.Com1Base, Serial16550.PortCount, Serial);
        IoBus.Register(PowerPort.Port, 1, new PowerPort(OnPowerPort));
        // The idle port (0xF5) is handled in HandleIo, which knows the vCPU; it is not on the bus.
        if (config.Balloon)
        {
            Balloon = new BalloonDevice(memory);
            BalloonTransport = new VirtioMmioTransport(Balloon, memory, DeviceLog);
            // The device signals the driver through a wrapper that also wakes idle vCPUs.
            Balloon.Attach(new WakingVirtioTransport(BalloonTransport, Idle.WakeForDevice));
            MmioBus.Register(GuestLayout.VirtioMmioBase, VirtioMmioTransport.WindowSize, BalloonTransport);
        }
    }

    /// <summary>Warnings about hostile or buggy driver behaviour, rate-limited and counted per fault.</summary>
    public DeviceLog DeviceLog { get; }

    /// <summary>Where the machine and its devices log (a machine made from this one, e.g. a migration's destination, logs there too).</summary>
    public ILoggerFactory Loggers { get; }

    /// <summary>The virtio-balloon device (null with the balloon off).</summary>
    public BalloonDevice? Balloon { get; }

    public VirtioMmioTransport? BalloonTransport { get; }

    public MachineConfig Config { get; }

    public VirtualMachine Vm { get; }

    public GuestMemory Memory { get; }

    public Serial16550 Serial { get; }

    /// <summary>The idle hint port (0xF5), where idle vCPUs sleep instead of spinning.</summary>
    public IdlePort Idle { get; }

    public IoBus IoBus { get; } = new();

    public MmioBus MmioBus { get; } = new();

    public IReadOnlyList<Vcpu> Vcpus => _vcpus;

    public IReadOnlyList<VcpuRunner> Runners => _runners;

    public uint TscKhz { get; private set; }

    /// <summary>The vCPU throttle in percent (0 = off); see <see cref="SetThrottle"/>.</summary>
    public int ThrottlePercent => _throttle.Percent;

    /// <summary>Completes when the guest powers off, panics, a vCPU faults or <see cref="Stop"/> is called.</summary>
    public Task<MachineExit> Exited => _exited.Task;

    public MachineStatus Status
    {
        get
        {
            lock (_stateLock)
                return _exited.Task.IsCompleted ? MachineStatus.Shutdown : !_started ? MachineStatus.Prelaunch : _paused ? _pausedAs : MachineStatus.Running;
        }
    }

    /// <summary>Builds the machine. Throws ConfigException, KvmUnavailableException or InvalidGuestImageException with a reason.</summary>
    /// <param name="loggers">Where the VMM's own messages go (none: nowhere).</param>
    public static GuestMachine Create(MachineConfig config, ISerialOutput console, ILoggerFactory? loggers = null)
    {
        config.Validate(MachineConfig.HostMemoryBytes());
        var image = ElfImage.Load(config.GuestImagePath);
        var kvm = KvmSystem.Open();
        VirtualMachine? vm = null;
        GuestMemory? memory = null;
        try
        {
            var maxVcpus = kvm.CheckExtension(KvmConstants.KVM_CAP_MAX_VCPUS);
            if (maxVcpus > 0 && config.Cpus > maxVcpus)
                throw new ConfigException($"cpus {config.Cpus} is more than this host's KVM allows ({maxVcpus})");
            if (image.HighestAddress > Math.Min(config.MemoryBytes, GuestLayout.LowRamLimit))
                throw new ConfigException($"memory {MachineConfig.FormatSize(config.MemoryBytes)} is too small for the guest image (it ends at 0x{image.HighestAddress:X})");
            vm = kvm.CreateVm();
            var slot = 0;
            memory = new GuestMemory(GuestLayout.RamBlocks(config.MemoryBytes).Select(b => RamBlock.Create(b.Name, b.Address, b.Size, slot++, config.MemoryBackend)));
            foreach (var block in memory.Blocks)
                vm.AddMemory(block);
            var machine = new GuestMachine(config, kvm, vm, memory, console, loggers ?? NullLoggerFactory.Instance);
            if (console is GuestConsole lines)
                lines.AttachInput(bytes => machine.Serial.EnqueueInput(bytes));
            machine.Boot(image);
            return machine;
        }
        catch
        {
            memory?.Dispose();
            vm?.Dispose();
            kvm.Dispose();
            throw;
        }
    }

    private void Boot(ElfImage image)
    {
        var cpuid = _kvm.GetSupportedCpuid();
        for (var i = 0; i < Config.Cpus; i++)
        {
            var vcpu = Vm.CreateVcpu(i);
            _vcpus.Add(vcpu);
            vcpu.SetCpuid(BootSetup.CpuidFor(cpuid, i, Config.Cpus));
            BootSetup.SetEntryState(vcpu, image.Entry);
            _runners.Add(new VcpuRunner(vcpu, this, OnVcpuFault));
        }
        TscKhz = _vcpus[0].GetTscKhz();
        BootSetup.LoadImage(Memory, image);
        BootSetup.WriteGdt(Memory);
        BootSetup.WritePageTables(Memory, Config.MemoryBytes);
        var devices = Balloon is null ? [] : new[] { new BootSetup.Device(GuestLayout.VirtioMmioBase, VirtioMmioTransport.WindowSize, 1) };
        BootSetup.WriteBootInfo(Memory, Config.Cpus, TscKhz, Config.CommandLine, devices);
    }

    /// <summary>
    /// Starts every vCPU thread (or, with <paramref name="paused"/>, starts them parked, reporting
    /// <paramref name="pausedAs"/>: <see cref="MachineStatus.InMigrate"/> for a machine waiting for a migration).
    /// </summary>
    public void Start(bool paused = false, MachineStatus pausedAs = MachineStatus.Paused)
    {
        CheckPausedStatus(pausedAs);
        lock (_stateLock)
        {
            if (_started)
                throw new InvalidOperationException("machine already started");
            _started = true;
            _paused = paused;
            _pausedAs = pausedAs;
        }
        foreach (var runner in _runners)
            runner.Start(paused);
        if (paused && !WaitAllPaused())
            throw new TimeoutException("the vCPU threads did not start");
    }

    /// <summary>
    /// Takes every vCPU out of the guest and parks it; returns once all are parked. Bounded: if they are not all
    /// parked within 5 s the machine is resumed and the pause fails.
    /// </summary>
    public void Pause()
    {
        lock (_lifecycle)
        {
            lock (_stateLock)
            {
                if (_paused || _exited.Task.IsCompleted)
                    return;
            }
            foreach (var runner in _runners)
                runner.RequestPause();
            if (!WaitAllPaused())
            {
                foreach (var runner in _runners)
                    runner.Resume();
                throw new TimeoutException($"the vCPUs did not pause within {PauseTimeout.TotalSeconds} s");
            }
            lock (_stateLock)
                (_paused, _pausedAs) = (true, MachineStatus.Paused);
        }
    }

    /// <summary>
    /// Says why a paused machine is paused, for query-status: <see cref="MachineStatus.PostMigrate"/> once its guest
    /// migrated away, <see cref="MachineStatus.InMigrate"/> while a migration comes in, or plain
    /// <see cref="MachineStatus.Paused"/>. False (nothing changed) when the machine is not paused (it ran on or ended).
    /// </summary>
    public bool MarkPaused(MachineStatus pausedAs)
    {
        CheckPausedStatus(pausedAs);
        lock (_stateLock)
        {
            if (!_paused || _exited.Task.IsCompleted)
                return false;
            _pausedAs = pausedAs;
            return true;
        }
    }

    private static void CheckPausedStatus(MachineStatus status)
    {
        if (status is not (MachineStatus.Paused or MachineStatus.InMigrate or MachineStatus.PostMigrate))
            throw new ArgumentOutOfRangeException(nameof(status), status, "a paused machine is paused, inmigrate or postmigrate");
    }

    /// <summary>Waits, against one deadline for all, until every runner is parked or stopped.</summary>
    private bool WaitAllPaused()
    {
        var deadline = DateTime.UtcNow + PauseTimeout;
        foreach (var runner in _runners)
        {
            var left = deadline - DateTime.UtcNow;
            if (!runner.WaitPaused(left > TimeSpan.Zero ? left : TimeSpan.Zero))
                return false;
        }
        return true;
    }

    public void Resume()
    {
        lock (_lifecycle)
        {
            lock (_stateLock)
            {
                if (!_paused || _exited.Task.IsCompleted)
                    return;
                _paused = false;
            }
            foreach (var runner in _runners)
                runner.Resume();
            // Return once every vCPU is back in the guest, so a `cont` that answered means running.
            var deadline = DateTime.UtcNow + PauseTimeout;
            foreach (var runner in _runners)
            {
                var left = deadline - DateTime.UtcNow;
                if (!runner.WaitResumed(left > TimeSpan.Zero ? left : TimeSpan.Zero))
                    throw new TimeoutException($"vCPU {runner.Vcpu.Index} did not resume within {PauseTimeout.TotalSeconds} s");
            }
        }
    }

    /// <summary>
    /// Throttles the vCPUs (QEMU's cpu_throttle_set, used by auto-converge): at <paramref name="percent"/> each
    /// vCPU sleeps outside the guest that share of the time, running about 10 ms between sleeps. 0 switches it off and
    /// returns with every vCPU back at full speed. Independent of pause and resume: a paused machine stays
    /// throttled and carries on throttled when resumed.
    /// </summary>
    public void SetThrottle(int percent)
    {
        if (percent is < 0 or > VcpuThrottle.MaxPercent)
            throw new ArgumentOutOfRangeException(nameof(percent), percent, $"throttle {percent}% is outside 0..{VcpuThrottle.MaxPercent}");
        _throttle.Set(percent);
    }

    /// <summary>The vCPU state of every vCPU; the machine must be paused.</summary>
    public IReadOnlyList<VcpuState> CaptureVcpuStates()
    {
        RequirePaused();
        var msrs = PrepareStateCapture();
        return [.. _vcpus.Select(v => VcpuState.Capture(v, msrs))];
    }

    /// <summary>The MSRs a vCPU state carries (chosen once per machine; the first choice costs milliseconds).</summary>
    public uint[] PrepareStateCapture() => _savedMsrs ??= MsrPolicy.Select(_kvm.GetMsrIndexList());

    public void RestoreVcpuStates(IReadOnlyList<VcpuState> states)
    {
        RequirePaused();
        if (states.Count != _vcpus.Count)
            throw new ArgumentException($"{states.Count} vCPU states for {_vcpus.Count} vCPUs", nameof(states));
        foreach (var state in states)
            state.Restore(_vcpus[state.Index]);
    }

    private void RequirePaused()
    {
        if (_runners.Any(r => r.State is VcpuRunner.RunnerState.Running or VcpuRunner.RunnerState.Starting))
            throw new InvalidOperationException("the machine must be paused");
    }

    /// <summary>Stops the machine on the host's behalf (QMP quit, a signal, a migrated-away guest); <paramref name="detail"/> is for the log.</summary>
    public void Stop(ShutdownCause cause, string detail) => Finish(new MachineExit(cause, detail));

    /// <summary>
    /// Stops the machine because memory it was promised cannot be brought in (a lazy restore's file failed): vCPUs
    /// blocked on such a page are taken out by the stop's kick (KVM_RUN returns EINTR); none is given the page.
    /// </summary>
    public void StopOnMemoryFault(string reason) => Finish(new MachineExit(ShutdownCause.HostError, reason, HostFault.Memory));

    private void OnPowerPort(uint value) => Finish(value == 0
        ? new MachineExit(ShutdownCause.GuestShutdown, "guest powered off")
        : new MachineExit(ShutdownCause.GuestPanic, $"guest panicked with code {value}"));

    private void OnVcpuFault(VcpuFault fault) => Finish(new MachineExit(ShutdownCause.HostError, fault.ToString(), HostFault.Vcpu));

    private void Finish(MachineExit exit)
    {
        if (!_exited.TrySetResult(exit))
            return;
        _throttle.Shutdown();
        foreach (var runner in _runners)
            runner.RequestStop();
    }

    void IVcpuExitHandler.HandleIo(Vcpu vcpu, ushort port, int size, bool isWrite, Span<byte> data)
    {
        IdlePort.MarkVcpuThread();
        if (port == IdlePort.Port && isWrite)
            Idle.Write(vcpu.Index, data);
        else if (isWrite)
            IoBus.Write(port, data);
        else
            IoBus.Read(port, data);
    }

    void IVcpuExitHandler.HandleMmio(Vcpu vcpu, ulong address, bool isWrite, Span<byte> data)
    {
        IdlePort.MarkVcpuThread();
        if (isWrite)
            MmioBus.Write(address, data);
        else
            MmioBus.Read(address, data);
    }

    public void Dispose()
    {
        Finish(new MachineExit(ShutdownCause.HostQmpQuit, "machine disposed"));
        var joined = true;
        foreach (var runner in _runners)
            joined &= runner.Join(TimeSpan.FromSeconds(5));
        // The throttle thread kicks vCPUs (writing their kvm_run pages), so it must be gone before they are unmapped.
        joined &= _throttle.WaitStopped(TimeSpan.FromSeconds(5));
        if (!joined)
        {
            // A vCPU thread is stuck (e.g. blocked writing console output): unmapping its kvm_run page or guest RAM
            // under it would turn a hang into memory corruption, so leak them instead.
            LogStuckThreads(_log);
            _kvm.Dispose();
            return;
        }
        foreach (var vcpu in _vcpus)
            vcpu.Dispose();
        Vm.Dispose();
        Memory.Dispose();
        _kvm.Dispose();
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "a vCPU or the throttle thread did not stop within 5 s; leaving the vCPUs and guest RAM in place")]
    private static partial void LogStuckThreads(ILogger logger);
}
