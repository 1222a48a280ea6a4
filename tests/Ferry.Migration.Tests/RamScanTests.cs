using Ferry.Kvm;
using Ferry.Migration.Ram;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>What a first migration pass looks at: the memfd's data extents and zero pages. No KVM needed.</summary>
public sealed class RamScanTests
{
    [Fact]
    public void Data_extents_are_exactly_the_pages_written_and_holes_are_never_reported()
    {
        using var memory = new GuestMemory([RamBlock.Create("ram-low", 0, 64UL << 20, 0)]);
        var block = memory.Blocks[0];
        Assert.Empty(block.DataExtents());
        memory.GetWriteSpan(4096 * 10, 4096 * 3).Fill(1);       // pages 10..12
        memory.GetWriteSpan(32UL << 20, 4096).Clear();           // page 8192, written with zeros: allocated
        memory.GetWriteSpan((64UL << 20) - 4096, 4096).Fill(9);  // the last page
        Assert.Equal([(4096UL * 10, 4096UL * 3), (32UL << 20, 4096UL), ((64UL << 20) - 4096, 4096UL)], block.DataExtents());
        block.Discard(4096 * 11, 4096);                          // a hole punched in the middle
        Assert.Equal([(4096UL * 10, 4096UL), (4096UL * 12, 4096UL), (32UL << 20, 4096UL), ((64UL << 20) - 4096, 4096UL)], block.DataExtents());
    }

    [Fact]
    public void Zero_detection_agrees_with_a_naive_scan_for_every_byte_position()
    {
        var page = new byte[4096];
        Assert.True(ZeroPage.IsZero(page));
        for (var i = 0; i < page.Length; i++)
        {
            page[i] = (byte)(1 << (i % 8));
            Assert.False(ZeroPage.IsZero(page), $"a non-zero byte at {i} was missed");
            page[i] = 0;
        }
        Assert.Throws<ArgumentException>(() => ZeroPage.IsZero(new byte[100]));
    }
}
