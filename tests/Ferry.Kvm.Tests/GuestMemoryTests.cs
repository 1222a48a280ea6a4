using Xunit;

namespace Ferry.Kvm.Tests;

/// <summary>Guest memory on memfd blocks: translation, bounds, the VMM dirty bitmap, discards. No KVM needed.</summary>
public sealed class GuestMemoryTests
{
    private static GuestMemory TwoBlocks() => new([
        RamBlock.Create("ram-low", 0, 8 << 20, 0),
        RamBlock.Create("ram-high", 1UL << 32, 4 << 20, 1),
    ]);

    [Fact]
    public void Translation_finds_the_block_and_offset_and_rejects_ranges_that_cross_or_leave_RAM()
    {
        using var memory = TwoBlocks();
        Assert.True(memory.TryTranslate((1UL << 32) + 4096, 16, out var block, out var offset));
        Assert.Equal("ram-high", block.Name);
        Assert.Equal(4096UL, offset);
        Assert.False(memory.TryTranslate((8 << 20) - 8, 16, out _, out _));          // crosses the end of ram-low
        Assert.False(memory.TryTranslate(9 << 20, 1, out _, out _));                  // in the hole
        Assert.False(memory.TryTranslate(ulong.MaxValue - 4, 16, out _, out _));      // wraps
        Assert.Throws<GuestMemoryException>(() => memory.Read<ulong>((8 << 20) - 4));
    }

    [Fact]
    public void Every_VMM_write_is_recorded_in_its_blocks_dirty_bitmap()
    {
        using var memory = TwoBlocks();
        memory.Write(4096 * 3 - 2, 0x11223344U);                 // straddles pages 2 and 3
        memory.GetWriteSpan((1UL << 32) + 4096 * 7, 10).Fill(1);
        _ = memory.Read<uint>(4096 * 100);                        // reads are not writes
        Assert.Equal([2UL, 3UL], memory.Blocks[0].VmmDirty.Pages());
        Assert.Equal([7UL], memory.Blocks[1].VmmDirty.Pages());
    }

    [Fact]
    public void Discard_gives_pages_back_to_the_host_and_they_read_as_zero()
    {
        using var memory = TwoBlocks();
        var block = memory.Blocks[0];
        memory.GetWriteSpan(0, 1 << 20).Fill(0xAB);
        Assert.True(block.AllocatedBytes() >= 1 << 20);
        block.Discard(0, 1 << 20);
        Assert.True(block.AllocatedBytes() < 64 * 1024);
        Assert.Equal(0, memory.Read<byte>(12345));
        Assert.Throws<ArgumentOutOfRangeException>(() => block.Discard(100, 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => block.Discard(0, 16 << 20));
    }

    [Fact]
    public void Overlapping_blocks_are_rejected()
    {
        var a = RamBlock.Create("a", 0, 2 << 20, 0);
        var b = RamBlock.Create("b", 1 << 20, 2 << 20, 1);
        var e = Assert.Throws<ArgumentException>(() => new GuestMemory([a, b]));
        Assert.Contains("overlap", e.Message, StringComparison.Ordinal);
        a.Dispose();
        b.Dispose();
    }
}

public sealed class MsrPolicyTests
{
    [Fact]
    public void Only_allow_listed_MSRs_are_saved()
    {
        var selected = MsrPolicy.Select([0x10, 0x17, 0x1B, 0x6E0, 0xC0000082, 0x4B564D01, 0x12345678]);
        Assert.Equal([0x10u, 0x1Bu, 0x6E0u, 0x4B564D01u, 0xC0000082u], selected); // ascending
    }
}

public sealed class KvmSystemErrorTests
{
    [Fact]
    public void Open_errors_say_what_is_wrong_with_the_device()
    {
        Assert.Contains("does not exist", Assert.Throws<KvmUnavailableException>(() => KvmSystem.Open("/nonexistent/kvm")).Message, StringComparison.Ordinal);
        Assert.Contains("is not a KVM device", Assert.Throws<KvmUnavailableException>(() => KvmSystem.Open("/dev/null")).Message, StringComparison.Ordinal);
        // Root is never refused, so the permission case is checked at the errno mapping.
        Assert.Contains("permission denied", KvmSystem.OpenError("/dev/kvm", Ferry.Interop.Libc.EACCES).Message, StringComparison.Ordinal);
    }
}
