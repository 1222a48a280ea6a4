using Ferry.Kvm;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Machine.Tests;

/// <summary>KVM's dirty log, merged with the VMM's own writes, against a known guest workload.</summary>
public sealed class DirtyLogTests
{
    [KvmFact]
    public async Task After_a_fill_the_dirty_log_holds_the_filled_pages_and_only_named_bookkeeping_pages()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 256);
        var info = await guest.Cmd("info");
        var machine = guest.Machine;
        var block = machine.Memory.Blocks[0];
        var log = new PageSet(block.PageCount);
        machine.Vm.SetDirtyLogging(true);
        machine.Vm.SyncDirtyLog(block, log);
        log.Clear();

        var fill = await guest.Cmd("fill 16");
        machine.Vm.SyncDirtyLog(block, log);

        var filled = new HashSet<ulong>();
        foreach (var range in fill.GetProperty("ranges").EnumerateArray())
        {
            for (var a = range[0].GetUInt64(); a < range[0].GetUInt64() + range[1].GetUInt64(); a += 4096)
                filled.Add(a / 4096);
        }
        Assert.Equal(4096, filled.Count);
        var dirty = log.Pages().ToHashSet();
        Assert.Empty(filled.Except(dirty));

        // Everything else the guest wrote is its own bookkeeping: .data/.bss (globals, its stacks), the
        // allocator's per-page metadata and the virtio driver's rings. Nothing else may show up.
        ulong P(string name) => info.GetProperty(name).GetUInt64() / 4096;
        bool IsBookkeeping(ulong page) =>
            (page >= P("data_start") && page < (info.GetProperty("image_end").GetUInt64() + 4095) / 4096) ||
            (page >= P("stacks_start") && page < P("stacks_end")) ||
            (page >= P("meta_start") && page < (info.GetProperty("meta_end").GetUInt64() + 4095) / 4096) ||
            (page >= P("driver_start") && page < (info.GetProperty("driver_end").GetUInt64() + 4095) / 4096);
        var bookkeeping = dirty.Except(filled).ToList();
        Assert.All(bookkeeping, page => Assert.True(IsBookkeeping(page), $"page 0x{page * 4096:X} is dirty but neither filled nor bookkeeping"));
        Assert.InRange(bookkeeping.Count, 1, 64);
    }

    [KvmFact]
    public async Task Writes_the_VMM_makes_are_in_the_merged_log()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 64);
        var machine = guest.Machine;
        var block = machine.Memory.Blocks[0];
        machine.Vm.SetDirtyLogging(true);
        var log = new PageSet(block.PageCount);
        machine.Vm.SyncDirtyLog(block, log);
        log.Clear();
        const ulong address = 40 * 1024 * 1024 + 8; // a free page, far from anything the guest is using
        machine.Memory.Write(address, 0xDEADBEEFUL);
        machine.Vm.SyncDirtyLog(block, log);
        Assert.True(log.Contains(address / 4096));
        log.Clear();
        machine.Vm.SyncDirtyLog(block, log);
        Assert.False(log.Contains(address / 4096));
    }
}
