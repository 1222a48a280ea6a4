using System.Runtime.InteropServices;
using Ferry.Interop;
using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>A KVM VM: its memory slots, its dirty log and its vCPUs.</summary>
public sealed unsafe class VirtualMachine : IDisposable
{
    private readonly SafeFd _fd;
    private readonly List<RamBlock> _slots = [];
    private readonly Lock _dirtyLock = new();
    private bool _dirtyLogging;

    internal VirtualMachine(KvmSystem kvm, SafeFd fd)
    {
        Kvm = kvm;
        _fd = fd;
    }

    public KvmSystem Kvm { get; }

    internal int Fd => _fd.Fd;

    public bool DirtyLoggingEnabled => _dirtyLogging;

    /// <summary>Registers a RAM block as its KVM memory slot.</summary>
    public void AddMemory(RamBlock block)
    {
        SetSlot(block, _dirtyLogging);
        _slots.Add(block);
    }

    private void SetSlot(RamBlock block, bool logDirty)
    {
        var region = new KvmUserspaceMemoryRegion
        {
            Slot = (uint)block.Slot,
            Flags = logDirty ? KvmConstants.KVM_MEM_LOG_DIRTY_PAGES : 0,
            GuestPhysAddr = block.GuestPhysicalAddress,
            MemorySize = block.Size,
            UserspaceAddr = (ulong)block.Mapping.Address,
        };
        KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_SET_USER_MEMORY_REGION, &region), "KVM_SET_USER_MEMORY_REGION");
    }

    /// <summary>
    /// Turns KVM dirty logging on or off for every slot. Turning it on starts a fresh log: pages written from now
    /// on are reported by the next <see cref="SyncDirtyLog"/>.
    /// </summary>
    public void SetDirtyLogging(bool enabled)
    {
        lock (_dirtyLock)
        {
            if (enabled == _dirtyLogging)
                return;
            foreach (var block in _slots)
            {
                SetSlot(block, enabled);
                // A fresh log: the VMM's writes from before logging began are not "since the last sync".
                if (enabled)
                    block.VmmDirty.Clear();
            }
            _dirtyLogging = enabled;
        }
    }

    /// <summary>
    /// Fetches and clears KVM's dirty log for <paramref name="block"/>, ORs in (and clears) the VMM's own writes,
    /// and ORs the result into <paramref name="destination"/> (one bit per page of the block). The one API that
    /// answers "which pages changed since the last sync".
    /// </summary>
    public void SyncDirtyLog(RamBlock block, PageSet destination)
    {
        if (destination.PageCount != block.PageCount)
            throw new ArgumentException($"bitmap has {destination.PageCount} pages, block {block.Name} has {block.PageCount}", nameof(destination));
        lock (_dirtyLock)
        {
            if (!_dirtyLogging)
                throw new InvalidOperationException("dirty logging is off; enable it before syncing the dirty log");
            var wordCount = PageSet.WordsFor(block.PageCount);
            var kvmBitmap = (ulong*)NativeMemory.AlignedAlloc((nuint)(wordCount * 8), 64);
            try
            {
                var log = new KvmDirtyLog { Slot = (uint)block.Slot, DirtyBitmap = (ulong)kvmBitmap };
                KvmSystem.Check(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_GET_DIRTY_LOG, &log), "KVM_GET_DIRTY_LOG");
                destination.UnionWith(new ReadOnlySpan<ulong>(kvmBitmap, wordCount));
            }
            finally
            {
                NativeMemory.AlignedFree(kvmBitmap);
            }
            block.VmmDirty.DrainInto(destination);
        }
    }

    public Vcpu CreateVcpu(int index)
    {
        var fd = SafeFd.FromResult(Libc.Ioctl(_fd.Fd, KvmIoctls.KVM_CREATE_VCPU, index), "KVM_CREATE_VCPU");
        return new Vcpu(this, index, fd);
    }

    public void Dispose() => _fd.Dispose();
}
