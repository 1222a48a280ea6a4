using Stopwatch = System.Diagnostics.Stopwatch;
using Ferry.Interop;
using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>
/// Runs one vCPU on its own thread. Other threads can pause it (within a bounded time, even while the guest
/// spins without exits: the kick signal plus immediate_exit force it out of KVM_RUN), resume it, stop it and
/// throttle it (make it sleep outside the guest for a while, as QEMU's cpu_throttle does).
/// </summary>
public sealed unsafe class VcpuRunner : IDisposable
{
    private readonly IVcpuExitHandler _handler;
    private readonly Action<VcpuFault> _onFault;
    private readonly object _gate = new(); // Monitor, not Lock: parking needs Monitor.Wait
    private readonly Thread _thread;
    private volatile bool _pauseRequested;
    private volatile bool _stopRequested;
    private volatile int _tid;
    // The throttle sleep the thread takes at its next kick, in TimeSpan ticks (0 = none); written by any thread.
    private long _throttleSleepTicks;
    // Bumped (under the gate) by CancelThrottleSleep, so a sleep already under way ends at once.
    private int _throttleCancelEpoch;
    private RunnerState _state = RunnerState.Starting;

    public VcpuRunner(Vcpu vcpu, IVcpuExitHandler handler, Action<VcpuFault> onFault)
    {
        Vcpu = vcpu;
        _handler = handler;
        _onFault = onFault;
        VcpuKick.EnsureInstalled();
        _thread = new Thread(ThreadMain) { Name = $"vcpu{vcpu.Index}", IsBackground = true };
    }

    public enum RunnerState { Starting, Running, Paused, Stopped }

    public Vcpu Vcpu { get; }

    /// <summary>The kernel id of the thread running this vCPU (0 before it started and after it stopped): what a userfaultfd reports a vCPU's fault by.</summary>
    public int ThreadId => _tid;

    public RunnerState State
    {
        get
        {
            lock (_gate)
                return _state;
        }
    }

    /// <summary>Exits handled, by reason; read for statistics and tests.</summary>
    public long ExitCount;

    /// <summary>
    /// Time spent in throttle sleeps, in TimeSpan ticks (Interlocked), added when each sleep ends; read for
    /// statistics and tests.
    /// </summary>
    public long ThrottledTicks;

    /// <summary>Starts the thread. With <paramref name="paused"/> it parks before first entering the guest.</summary>
    public void Start(bool paused)
    {
        _pauseRequested = paused;
        _thread.Start();
    }

    /// <summary>Asks the vCPU to leave the guest and park. Does not wait; see <see cref="WaitPaused"/>.</summary>
    public void RequestPause()
    {
        lock (_gate)
        {
            _pauseRequested = true;
            // Wakes a throttle sleep, so a pause never waits for one to run out.
            Monitor.PulseAll(_gate);
        }
        Kick();
    }

    /// <summary>
    /// Asks the vCPU to leave the guest and sleep for <paramref name="sleep"/> before entering it again. Does not
    /// wait. A newer request replaces one not yet taken; a pause or stop ends the sleep early, and one requested
    /// before a pause is dropped when the vCPU resumes.
    /// </summary>
    public void RequestThrottleSleep(TimeSpan sleep)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(sleep, TimeSpan.Zero);
        if (sleep == TimeSpan.Zero)
            return;
        Volatile.Write(ref _throttleSleepTicks, sleep.Ticks);
        Kick();
    }

    /// <summary>Drops a throttle sleep not yet taken and ends one under way (throttling switched off).</summary>
    public void CancelThrottleSleep()
    {
        lock (_gate)
        {
            Volatile.Write(ref _throttleSleepTicks, 0);
            _throttleCancelEpoch++;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Waits until the vCPU is parked (or stopped). Returns false on timeout.</summary>
    public bool WaitPaused(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_gate)
        {
            while (_state is RunnerState.Running or RunnerState.Starting)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                    return false;
                Monitor.Wait(_gate, left);
            }
            return true;
        }
    }

    public void Resume()
    {
        lock (_gate)
        {
            _pauseRequested = false;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Waits until the thread has left its parked state (or stopped). Returns false on timeout.</summary>
    public bool WaitResumed(TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        lock (_gate)
        {
            while (_state == RunnerState.Paused && !_pauseRequested)
            {
                var left = deadline - DateTime.UtcNow;
                if (left <= TimeSpan.Zero)
                    return false;
                Monitor.Wait(_gate, left);
            }
            return true;
        }
    }

    /// <summary>Asks the thread to stop for good; safe to call from the vCPU thread itself (e.g. on power-off).</summary>
    public void RequestStop()
    {
        lock (_gate)
        {
            _stopRequested = true;
            Monitor.PulseAll(_gate);
        }
        Kick();
    }

    public bool Join(TimeSpan timeout) => (_thread.ThreadState & ThreadState.Unstarted) != 0 || _thread.Join(timeout);

    private void Kick()
    {
        // Under the gate, so the thread cannot exit (and its tid be reused) between the check and the signal.
        lock (_gate)
        {
            if (_state == RunnerState.Stopped)
                return;
            Vcpu.SetImmediateExit(true);
            var tid = _tid;
            if (tid != 0)
                VcpuKick.Send(tid);
        }
    }

    private void SetState(RunnerState state)
    {
        lock (_gate)
        {
            _state = state;
            Monitor.PulseAll(_gate);
        }
    }

    private void ThreadMain()
    {
        try
        {
            VcpuKick.BlockInCurrentThread();
            Vcpu.SetSignalMaskUnblocking(VcpuKick.Signal);
            _tid = Libc.GetTid();
            SetState(RunnerState.Running);
            RunLoop();
        }
        catch (Exception e)
        {
            _onFault(new VcpuFault(Vcpu.Index, "VMM error", e.Message));
        }
        finally
        {
            lock (_gate)
            {
                _tid = 0;
                _state = RunnerState.Stopped;
                Monitor.PulseAll(_gate);
            }
        }
    }

    private void RunLoop()
    {
        while (!_stopRequested)
        {
            if (_pauseRequested)
            {
                Park();
                continue;
            }
            var errno = Vcpu.Run();
            if (errno is Libc.EINTR or Libc.EAGAIN)
            {
                // Kicked. Take the signal off the thread first, then look at the flags: a kick sent after this
                // point finds the signal unblocked inside the next KVM_RUN, so no pause request is lost.
                VcpuKick.ConsumePending();
                if (!_pauseRequested && !_stopRequested)
                    Vcpu.SetImmediateExit(false);
                if (Volatile.Read(ref _throttleSleepTicks) != 0)
                    TakeThrottleSleep();
                continue;
            }
            if (errno != 0)
            {
                _onFault(new VcpuFault(Vcpu.Index, "KVM_RUN failed", $"{Libc.ErrnoMessage(errno)} (errno {errno})"));
                return;
            }
            ExitCount++;
            if (!HandleExit())
                return;
        }
    }

    private void Park()
    {
        lock (_gate)
        {
            _state = RunnerState.Paused;
            Monitor.PulseAll(_gate);
            while (_pauseRequested && !_stopRequested)
                Monitor.Wait(_gate);
            if (!_stopRequested)
            {
                _state = RunnerState.Running;
                Monitor.PulseAll(_gate);
            }
        }
        VcpuKick.ConsumePending();
        if (!_stopRequested)
            Vcpu.SetImmediateExit(false);
        // A throttle slice asked for before the pause belongs to time that has passed.
        Interlocked.Exchange(ref _throttleSleepTicks, 0);
    }

    /// <summary>
    /// Sleeps outside the guest for the pending throttle sleep. Waits on the gate rather than Thread.Sleep, so
    /// RequestPause, RequestStop and CancelThrottleSleep end it at once and GuestMachine.Pause stays bounded.
    /// </summary>
    private void TakeThrottleSleep()
    {
        lock (_gate)
        {
            if (_pauseRequested || _stopRequested)
                return; // the sleep stays pending; Park drops it
            var sleepTicks = Interlocked.Exchange(ref _throttleSleepTicks, 0);
            if (sleepTicks <= 0)
                return;
            var epoch = _throttleCancelEpoch;
            var start = Stopwatch.GetTimestamp();
            while (!_pauseRequested && !_stopRequested && epoch == _throttleCancelEpoch)
            {
                var leftTicks = sleepTicks - Stopwatch.GetElapsedTime(start).Ticks;
                if (leftTicks <= 0)
                    break;
                // Rounded up to whole milliseconds: Monitor.Wait truncates, and a 0 ms wait would spin.
                Monitor.Wait(_gate, (int)((leftTicks + TimeSpan.TicksPerMillisecond - 1) / TimeSpan.TicksPerMillisecond));
            }
            Interlocked.Add(ref ThrottledTicks, Stopwatch.GetElapsedTime(start).Ticks);
        }
    }

    /// <summary>Handles one exit; false when the vCPU cannot continue.</summary>
    private bool HandleExit()
    {
        var run = Vcpu.RunPage;
        var reason = Vcpu.ExitReason;
        switch (reason)
        {
            case KvmExitReasons.KVM_EXIT_IO:
            {
                var size = run[KvmRunOffsets.io_size];
                var count = *(uint*)(run + KvmRunOffsets.io_count);
                var offset = *(ulong*)(run + KvmRunOffsets.io_data_offset);
                var port = *(ushort*)(run + KvmRunOffsets.io_port);
                var isWrite = run[KvmRunOffsets.io_direction] == KvmConstants.KVM_EXIT_IO_OUT;
                var length = (int)(size * count);
                // The data area lies inside the kvm_run mapping; KVM guarantees it, but a bad offset must not
                // become a wild pointer.
                if (size is not (1 or 2 or 4) || offset + (ulong)length > (ulong)Vcpu.Vm.Kvm.VcpuMmapSize)
                {
                    _onFault(new VcpuFault(Vcpu.Index, "bad IO exit", $"port 0x{port:X} size {size} count {count} offset 0x{offset:X}"));
                    return false;
                }
                _handler.HandleIo(Vcpu, port, size, isWrite, new Span<byte>(run + offset, length));
                return true;
            }
            case KvmExitReasons.KVM_EXIT_MMIO:
            {
                var address = *(ulong*)(run + KvmRunOffsets.mmio_phys_addr);
                var length = (int)Math.Min(8u, *(uint*)(run + KvmRunOffsets.mmio_len));
                var isWrite = run[KvmRunOffsets.mmio_is_write] != 0;
                _handler.HandleMmio(Vcpu, address, isWrite, new Span<byte>(run + KvmRunOffsets.mmio_data, length));
                return true;
            }
            case KvmExitReasons.KVM_EXIT_INTR:
                VcpuKick.ConsumePending();
                return true;
            case KvmExitReasons.KVM_EXIT_HLT:
                _onFault(new VcpuFault(Vcpu.Index, "guest halted (HLT)", VcpuDiagnostics.Describe(Vcpu)));
                return false;
            case KvmExitReasons.KVM_EXIT_SHUTDOWN:
                _onFault(new VcpuFault(Vcpu.Index, "guest shut down (triple fault or an exception with no handler)", VcpuDiagnostics.Describe(Vcpu)));
                return false;
            case KvmExitReasons.KVM_EXIT_FAIL_ENTRY:
            {
                var hw = *(ulong*)(run + KvmRunOffsets.fail_entry_hardware_entry_failure_reason);
                _onFault(new VcpuFault(Vcpu.Index, "VM entry failed", $"hardware reason 0x{hw:X}; {VcpuDiagnostics.Describe(Vcpu)}"));
                return false;
            }
            case KvmExitReasons.KVM_EXIT_INTERNAL_ERROR:
            {
                var suberror = *(uint*)(run + KvmRunOffsets.internal_suberror);
                var ndata = Math.Min(16u, *(uint*)(run + KvmRunOffsets.internal_ndata));
                var data = new ReadOnlySpan<ulong>(run + KvmRunOffsets.internal_data, (int)ndata);
                var words = string.Join(' ', data.ToArray().Select(d => $"0x{d:X}"));
                _onFault(new VcpuFault(Vcpu.Index, "KVM internal error", $"suberror {suberror} data [{words}]; {VcpuDiagnostics.Describe(Vcpu)}"));
                return false;
            }
            default:
                _onFault(new VcpuFault(Vcpu.Index, $"unhandled exit {KvmExitReasons.Name(reason)}", VcpuDiagnostics.Describe(Vcpu)));
                return false;
        }
    }

    public void Dispose()
    {
        RequestStop();
        Join(TimeSpan.FromSeconds(5));
    }
}

/// <summary>Register dumps for fatal exits.</summary>
public static class VcpuDiagnostics
{
    public static string Describe(Vcpu vcpu)
    {
        try
        {
            var r = vcpu.GetRegs();
            var s = vcpu.GetSregs();
            return $"RIP={r.Rip:x16} RSP={r.Rsp:x16} RFLAGS={r.Rflags:x8} RAX={r.Rax:x16} RBX={r.Rbx:x16} RCX={r.Rcx:x16} " +
                   $"RDX={r.Rdx:x16} RSI={r.Rsi:x16} RDI={r.Rdi:x16} RBP={r.Rbp:x16} CS={s.Cs.Selector:x4} SS={s.Ss.Selector:x4} " +
                   $"CR0={s.Cr0:x8} CR2={s.Cr2:x16} CR3={s.Cr3:x16} CR4={s.Cr4:x8} EFER={s.Efer:x}";
        }
        catch (ErrnoException e)
        {
            return $"(registers unavailable: {e.Message})";
        }
    }
}
