using System.Runtime.InteropServices;
using Ferry.Interop;

namespace Ferry.Kvm;

/// <summary>
/// The signal that kicks a vCPU thread out of KVM_RUN. The signal is blocked in every vCPU thread and unblocked
/// only inside KVM_RUN (KVM_SET_SIGNAL_MASK), so it interrupts the guest but is never delivered to user space
/// on a vCPU thread: the thread consumes it with sigtimedwait. It still needs a real handler, because a signal
/// that is ignored is discarded before it can interrupt KVM_RUN, and one left at its default action would kill
/// the process. The handler is libc's getpid: async-signal-safe and without effect, so running managed code in
/// a signal handler never comes up (if the signal is ever sent to the process from outside).
/// </summary>
public static unsafe class VcpuKick
{
    private static readonly Lock InitLock = new();
    private static int _signal;

    /// <summary>SIGRTMIN + 6: CoreCLR uses SIGRTMIN itself for thread activation.</summary>
    public static int Signal
    {
        get
        {
            EnsureInstalled();
            return _signal;
        }
    }

    public static void EnsureInstalled()
    {
        if (Volatile.Read(ref _signal) != 0)
            return;
        lock (InitLock)
        {
            if (_signal != 0)
                return;
            var signal = Libc.CurrentSigRtMin() + 6;
            var libc = NativeLibrary.Load("libc.so.6");
            var action = new SigAction { Handler = NativeLibrary.GetExport(libc, "getpid") };
            ErrnoException.Check(Libc.Sigaction(signal, &action, null), "sigaction");
            Volatile.Write(ref _signal, signal);
        }
    }

    /// <summary>Blocks the kick signal in the calling thread (a vCPU thread, before it first enters KVM_RUN).</summary>
    public static void BlockInCurrentThread()
    {
        var set = default(SigSet);
        set.Add(Signal);
        if (Libc.PthreadSigmask(Libc.SIG_BLOCK, &set, null) != 0)
            throw new InvalidOperationException("pthread_sigmask failed");
    }

    /// <summary>Takes a pending kick off the calling thread, so the next KVM_RUN is not interrupted by it.</summary>
    public static void ConsumePending()
    {
        var set = default(SigSet);
        set.Add(Signal);
        var zero = default(TimeSpec);
        while (Libc.SigTimedWait(&set, null, &zero) > 0)
        {
        }
    }

    public static void Send(int tid) => Libc.TgKill(Libc.GetPid(), tid, Signal);
}
