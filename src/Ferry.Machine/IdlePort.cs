using System.Buffers.Binary;
using System.Runtime.InteropServices;
using Ferry.Devices.Virtio;
using Ferry.Interop;
using Ferry.Kvm;

namespace Ferry.Machine;

/// <summary>
/// Port 0xF5, the idle hint (docs/guest-abi.md): Ferry's stand-in for <c>hlt</c>, which the CPL3 guest cannot
/// execute. A write of N &gt; 0 blocks the writing vCPU's thread for at most N µs (capped at 10 ms), outside the
/// guest, so an idle vCPU stops burning a host core; a write of 0 wakes every vCPU sleeping there (the guest's
/// IPI). A sleep ends early when something happens that the guest must see: <see cref="Wake"/> (console input, a
/// balloon request or configuration change, another vCPU's wake write) or a kick of the runner (pause, stop,
/// throttle).
/// </summary>
/// <remarks>
/// The sleep is a <c>sigtimedwait</c> on the vCPU kick signal, which is blocked on vCPU threads outside KVM_RUN:
/// <see cref="VcpuRunner"/>'s kick (RequestPause, RequestStop, a throttle slice) sets immediate_exit and then sends
/// the signal, so it ends the sleep at once, and the next KVM_RUN leaves straight away to park. <see cref="Wake"/>
/// sends the same signal to the threads that are asleep; one that arrives just after a sleep ended stays pending
/// and costs one spurious KVM_RUN exit (or ends the next sleep early), nothing more. (Were the thread to exit in
/// that instant and its tid be reused within the process, the signal's handler is getpid: still harmless.)
/// <para>
/// No lost wake-ups: every event bumps a counter, and each vCPU remembers the count at the end of its last sleep.
/// The guest polls its devices between sleeps, so a sleep request with the counter moved since then returns at
/// once, and the guest looks again. Allocation-free: this runs on the vCPU exit path.
/// </para>
/// </remarks>
public sealed unsafe class IdlePort
{
    public const ushort Port = 0xF5;
    /// <summary>The longest sleep granted, whatever the guest asks for.</summary>
    public const uint MaxSleepMicroseconds = 10_000;

    // Set on vCPU threads (by the machine's exit handlers), so device signals raised there do not wake anyone.
    [ThreadStatic]
    private static bool _onVcpuThread;

    private readonly Slot[] _slots;
    private long _events;

    public IdlePort(int cpus) => _slots = new Slot[cpus];

    /// <summary>Sleeps taken (requests that did not return at once because of an event); for tests and statistics.</summary>
    public long Sleeps;

    /// <summary>Wake-ups: events that may end sleeps (see <see cref="Wake"/>).</summary>
    public long Events => Volatile.Read(ref _events);

    /// <summary>A guest write to the port, on vCPU <paramref name="vcpuIndex"/>'s thread.</summary>
    public void Write(int vcpuIndex, ReadOnlySpan<byte> data)
    {
        var value = data.Length switch
        {
            0 => 0u,
            1 => data[0],
            2 or 3 => BinaryPrimitives.ReadUInt16LittleEndian(data),
            _ => BinaryPrimitives.ReadUInt32LittleEndian(data),
        };
        if (value == 0)
            Wake();
        else if ((uint)vcpuIndex < (uint)_slots.Length)
            Sleep(ref _slots[vcpuIndex], Math.Min(value, MaxSleepMicroseconds));
    }

    /// <summary>
    /// Something happened that an idle guest must see: ends every sleep under way, and the next sleep request of
    /// each vCPU that has not polled since returns at once. Any thread; cheap when nobody sleeps.
    /// </summary>
    public void Wake()
    {
        Interlocked.Increment(ref _events);
        // After the increment (a full fence): a vCPU not seen asleep here sees the new count before it sleeps.
        for (var i = 0; i < _slots.Length; i++)
        {
            ref var slot = ref _slots[i];
            if (Volatile.Read(ref slot.Sleeping) != 0)
                VcpuKick.Send(slot.Tid);
        }
    }

    /// <summary>Marks the calling thread as a vCPU thread (see <see cref="WakeForDevice"/>); cheap, called on every exit.</summary>
    public static void MarkVcpuThread() => _onVcpuThread = true;

    /// <summary>
    /// A device signalled its driver: <see cref="Wake"/>, unless this is a vCPU thread. There the device is
    /// answering the guest's own register access (a QueueNotify), and the guest, running on that vCPU, polls for
    /// the result itself; waking the other vCPUs for every buffer of a balloon inflation or a hint run would only
    /// cost them exits.
    /// </summary>
    public void WakeForDevice()
    {
        if (!_onVcpuThread)
            Wake();
    }

    private void Sleep(ref Slot slot, uint microseconds)
    {
        var events = Volatile.Read(ref _events);
        if (events != slot.SeenEvents)
        {
            // Something happened since this vCPU last returned from here: let the guest poll first.
            slot.SeenEvents = events;
            return;
        }
        if (slot.Tid == 0)
            slot.Tid = Libc.GetTid();
        Interlocked.Exchange(ref slot.Sleeping, 1);
        // After Sleeping = 1 (a full fence): a Wake from here on sends the signal; one before it moved the count.
        if (Volatile.Read(ref _events) == events)
        {
            var set = default(SigSet);
            set.Add(VcpuKick.Signal);
            var timeout = new TimeSpec { Seconds = 0, Nanoseconds = microseconds * 1000L };
            // Returns the signal (woken or kicked), or -1 with EAGAIN (time up) or EINTR (another signal): all
            // mean "go back to the guest".
            Libc.SigTimedWait(&set, null, &timeout);
            Interlocked.Increment(ref Sleeps);
        }
        Volatile.Write(ref slot.Sleeping, 0);
        slot.SeenEvents = Volatile.Read(ref _events);
    }

    // One cache line per vCPU: Sleeping is written on every sleep and read by every Wake.
    [StructLayout(LayoutKind.Sequential, Size = 64)]
    private struct Slot
    {
        public int Sleeping;
        public int Tid;          // the vCPU thread, set on its first sleep
        public long SeenEvents;  // _events when this vCPU last returned to the guest from a sleep request
    }
}

/// <summary>
/// The balloon's view of its transport, with a wake-up of idle vCPUs whenever the device signals the driver
/// (buffers returned, a configuration change, needs-reset) from a host thread: host-side requests (QMP balloon,
/// stats, hints, free page bitmaps) then reach a sleeping guest at once instead of at its next poll.
/// </summary>
internal sealed class WakingVirtioTransport(IVirtioTransport inner, Action wake) : IVirtioTransport
{
    public Lock SyncRoot => inner.SyncRoot;

    public ulong NegotiatedFeatures => inner.NegotiatedFeatures;

    public bool DriverOk => inner.DriverOk;

    public uint Status => inner.Status;

    public DeviceLog Log => inner.Log;

    public SplitQueue Queue(int index) => inner.Queue(index);

    public void SignalUsed()
    {
        inner.SignalUsed();
        wake();
    }

    public void SignalConfigChange()
    {
        inner.SignalConfigChange();
        wake();
    }

    public void NeedsReset(string fault, string detail)
    {
        inner.NeedsReset(fault, detail);
        wake();
    }
}
