using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Tests.Synthetic;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// The engine over anonymous huge-page memory (the backend QEMU uses): the engine does not know the backing, and
/// every page class stays exact. Residency comes per 2 MiB where the host gives huge pages, so a touched huge
/// page's zero-filled rest travels as zero runs and a huge page never touched is skipped whole. No KVM needed.
/// </summary>
public sealed class AnonymousMemoryEngineTests
{
    private const ulong MiB = 1UL << 20;

    private static ulong ExtentPages(RamBlock block) => block.DataExtents().Aggregate(0UL, (sum, e) => sum + e.Length / Page.Size);

    [Fact]
    public void Idle_anonymous_memory_arrives_whole_and_never_touched_huge_pages_are_never_read()
    {
        using var vm = new SyntheticVm(RamBackend.Anonymous, 64 * MiB, 32 * MiB);
        vm.Fill(0, 100, 300, 1);
        vm.Blocks[0].Mapping.GetSpan(2000 * (ulong)Page.Size, 50 * Page.Size).Clear(); // touched, but zero
        vm.Fill(1, 7, 10, 2);
        using var target = new SyntheticTarget(vm.Blocks);
        var resident = ExtentPages(vm.Blocks[0]) + ExtentPages(vm.Blocks[1]);
        var allocatedBefore = vm.Blocks[0].AllocatedBytes() + vm.Blocks[1].AllocatedBytes();

        var (stats, report) = PrecopyEngineTests.Migrate(vm, target);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(allocatedBefore, vm.Blocks[0].AllocatedBytes() + vm.Blocks[1].AllocatedBytes()); // nothing else was read
        Assert.Equal(310, stats.NormalPages);
        Assert.Equal((long)resident - 310, stats.ZeroPages);
        Assert.Equal((long)(96 * MiB / Page.Size - resident), stats.UntouchedPages);
        Assert.True(stats.UntouchedPages >= (long)((96 * MiB - 4 * (ulong)Page.ChunkSize) / Page.Size), $"{stats.UntouchedPages} untouched: whole huge pages never touched must be skipped");
        Assert.Equal(310UL, report.DataPages);
        Assert.True(stats.TransferredBytes < 310 * Page.Size + 64 * 1024, $"{stats.TransferredBytes} bytes for 310 pages");
        // The destination allocated no more than the huge pages that hold data: zero runs stayed untouched.
        Assert.InRange(target.Blocks[0].AllocatedBytes() + target.Blocks[1].AllocatedBytes(), 310UL * Page.Size, 3UL * (ulong)Page.ChunkSize);
        PrecopyEngineTests.AssertSameMemory(vm, target);
    }
}
