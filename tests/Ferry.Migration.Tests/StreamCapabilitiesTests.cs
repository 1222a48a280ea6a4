using Ferry.Migration.Stream;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>The capability bits are wire values: docs/migration-stream.md fixes each bit.</summary>
public sealed class StreamCapabilitiesTests
{
    [Fact]
    public void Bits_are_the_documented_wire_values()
    {
        Assert.Equal(1UL << 0, (ulong)StreamCapabilities.ZeroRuns);
        Assert.Equal(1UL << 1, (ulong)StreamCapabilities.BalloonBitmap);
        Assert.Equal(1UL << 2, (ulong)StreamCapabilities.Multichannel);
        Assert.Equal(1UL << 3, (ulong)StreamCapabilities.PassAcks);
        Assert.Equal(1UL << 4, (ulong)StreamCapabilities.KeepAlive);
        Assert.Equal(1UL << 5, (ulong)StreamCapabilities.Verify);
        Assert.Equal(1UL << 16, (ulong)StreamCapabilities.Postcopy);
        Assert.Equal(1UL << 17, (ulong)StreamCapabilities.PostcopyResume);
        Assert.Equal(0b111111UL | 1UL << 16, (ulong)StreamCapabilities.All);
    }

    [Fact]
    public void Header_carries_the_flags_unchanged()
    {
        using var ms = new MemoryStream();
        var blocks = new[] { new BlockDescriptor("ram-low", 1UL << 20) };
        var w = new RecordWriter(ms);
        w.WriteHeader(new StreamHeader((ulong)StreamCapabilities.All, 1, blocks));
        w.Flush();
        ms.Position = 0;
        var header = new RecordReader(ms, blocks).ReadHeader();
        Assert.Equal(StreamCapabilities.All, (StreamCapabilities)header.Capabilities);
    }
}
