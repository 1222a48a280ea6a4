using Ferry.Kvm;

namespace Ferry.Machine;

/// <summary>
/// Slows the guest down by making every running vCPU sleep part of the time, QEMU's cpu_throttle scheme (used by
/// auto-converge, so a guest that dirties memory faster than migration can send it lets migration catch up).
/// At P percent, a timer fires every <c>10 ms / (1 - P/100)</c> and asks each vCPU to sleep
/// <c>P/(100 - P) * 10 ms</c>: each vCPU runs about 10 ms, then sleeps, so it is in the guest (100 - P)% of the time.
/// One background thread, started on the first non-zero percent and ended by percent 0 or <see cref="Shutdown"/>.
/// </summary>
internal sealed class VcpuThrottle(IReadOnlyList<VcpuRunner> runners)
{
    public const int MaxPercent = 99;

    /// <summary>QEMU's CPU_THROTTLE_TIMESLICE_NS: how long a throttled vCPU runs between sleeps.</summary>
    public static readonly TimeSpan Timeslice = TimeSpan.FromMilliseconds(10);

    private readonly object _gate = new(); // Monitor, not Lock: the tick wait needs Monitor.Wait
    // The thread that currently ticks; a thread that finds it is no longer this one exits (so percent 0 then
    // non-zero again never leaves two threads kicking).
    private Thread? _ticker;
    // The last thread started, kept after it is retired so WaitStopped can join it.
    private Thread? _lastStarted;
    private int _percent;
    private bool _shutDown;

    public int Percent => Volatile.Read(ref _percent);

    /// <summary>How long each vCPU sleeps per tick at <paramref name="percent"/>: throttle_ratio * timeslice.</summary>
    public static TimeSpan SleepPerTick(int percent) => TimeSpan.FromTicks(Timeslice.Ticks * percent / (100 - percent));

    /// <summary>The tick period at <paramref name="percent"/>: timeslice / (1 - percent/100).</summary>
    public static TimeSpan TickPeriod(int percent) => TimeSpan.FromTicks(Timeslice.Ticks * 100 / (100 - percent));

    /// <summary>
    /// Sets the throttle (0..99, validated by the caller). A new non-zero value applies from the next tick; 0 ends
    /// the thread and every sleep under way before it returns, so the guest is at full speed at once.
    /// </summary>
    public void Set(int percent)
    {
        Thread? retired = null;
        lock (_gate)
        {
            Volatile.Write(ref _percent, percent);
            if (percent > 0 && _ticker is null && !_shutDown)
            {
                _ticker = new Thread(TickLoop) { Name = "vcpu-throttle", IsBackground = true };
                _lastStarted = _ticker;
                _ticker.Start();
            }
            else if (percent == 0 && _ticker is not null)
            {
                retired = _ticker;
                _ticker = null;
                Monitor.PulseAll(_gate);
            }
        }
        if (retired is null)
            return;
        // Joined before cancelling: a tick already under way could otherwise hand out a sleep after the cancel.
        // A tick only takes each runner's gate briefly, so this is short.
        if (retired != Thread.CurrentThread)
            retired.Join();
        foreach (var runner in runners)
            runner.CancelThrottleSleep();
    }

    /// <summary>Ends the thread for good (the machine stopped); does not wait. Sleeps end with the vCPUs' stop.</summary>
    public void Shutdown()
    {
        lock (_gate)
        {
            _shutDown = true;
            _ticker = null;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>After <see cref="Shutdown"/>: waits for the thread to end, so nothing kicks a vCPU being disposed.</summary>
    public bool WaitStopped(TimeSpan timeout)
    {
        Thread? thread;
        lock (_gate)
            thread = _lastStarted;
        return thread is null || thread == Thread.CurrentThread || thread.Join(timeout);
    }

    private void TickLoop()
    {
        var self = Thread.CurrentThread;
        while (true)
        {
            int percent;
            lock (_gate)
            {
                if (_ticker != self)
                    return;
                percent = _percent;
            }
            var sleep = SleepPerTick(percent);
            foreach (var runner in runners)
            {
                // Parked or stopped vCPUs do not run, so there is nothing to slow down (QEMU's throttle clock
                // stops while the VM is stopped, too). A pause that races with this is fine: the runner drops
                // the sleep when it resumes.
                if (runner.State == VcpuRunner.RunnerState.Running)
                    runner.RequestThrottleSleep(sleep);
            }
            lock (_gate)
            {
                // Measured from after the kicks, like QEMU's timer_mod(now + period): a late tick shifts the next
                // one rather than bunching sleeps together.
                if (_ticker == self)
                    Monitor.Wait(_gate, TickPeriod(percent));
            }
        }
    }
}
