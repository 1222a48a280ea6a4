using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>RAM through the stream between two sets of memfd blocks (synthetic memory, no KVM).</summary>
public sealed class RamTransferTests
{
    private const ulong BlockBytes = 32UL << 20;

    private static GuestMemory NewMemory() => new([RamBlock.Create("ram-low", 0, BlockBytes, 0)]);

    private static ulong Pattern(ulong address, ulong generation) => unchecked(address * 0x9E3779B97F4A7C15UL + generation * 0xC2B2AE3D27D4EB4FUL);

    private static void Fill(GuestMemory memory, ulong firstPage, ulong pages, ulong generation)
    {
        for (var a = firstPage * 4096; a < (firstPage + pages) * 4096; a += 8)
            memory.Write(a, Pattern(a, generation));
    }

    private static (RamSendCounters Counters, GuestMemory Destination) Transfer(GuestMemory source, Func<RamBlock, RecordWriter, RamSendCounters, bool> send, GuestMemory? destination = null)
    {
        using var stream = new MemoryStream();
        var writer = new RecordWriter(stream);
        var blocks = source.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray();
        writer.WriteHeader(new StreamHeader(0b11, 1, blocks));
        var counters = new RamSendCounters();
        send(source.Blocks[0], writer, counters);
        writer.WriteEnd();
        destination ??= NewMemory();
        var reader = new RecordReader(new MemoryStream(stream.ToArray()), blocks);
        reader.ReadHeader();
        Record record;
        while ((record = reader.ReadRecord()).Type != RecordType.End)
            Assert.True(RamLoader.Apply(record, destination));
        return (counters, destination);
    }

    [Fact]
    public void A_first_pass_sends_data_as_pages_zeros_as_runs_and_never_reads_untouched_memory()
    {
        using var source = NewMemory();
        Fill(source, 100, 300, 1);                                   // 300 data pages (two records: 256 + 44)
        source.GetWriteSpan(2000 * 4096, 50 * 4096).Clear();         // 50 pages written with zeros
        Fill(source, 5000, 1, 2);
        var sourceAllocated = source.Blocks[0].AllocatedBytes();
        var (counters, destination) = Transfer(source, (b, w, c) => { RamSender.SendFirstPass(b, 0, w, c); return true; });
        using (destination)
        {
            Assert.Equal(sourceAllocated, source.Blocks[0].AllocatedBytes()); // the send read no hole
            Assert.Equal(301UL, counters.DataPages);
            Assert.Equal(50UL, counters.ZeroPages);
            Assert.Equal(BlockBytes / 4096 - 351, counters.UntouchedPages);
            // The destination holds only the data pages: zero runs and untouched pages stay holes. (Checked first:
            // reading a hole, as the comparison below does, allocates it.)
            Assert.InRange(destination.Blocks[0].AllocatedBytes(), 301UL * 4096, 301UL * 4096 + (1 << 20));
            Assert.True(source.Blocks[0].Mapping.GetSpan(0, (int)BlockBytes).SequenceEqual(destination.Blocks[0].Mapping.GetSpan(0, (int)BlockBytes)));
        }
    }

    [Fact]
    public void Pages_in_the_skip_bitmap_are_not_sent()
    {
        using var source = NewMemory();
        Fill(source, 0, 1024, 1);
        var balloon = new PageBitmap(source.Blocks[0].PageCount);
        balloon.SetRange(0, 512 * 4096);
        var (counters, destination) = Transfer(source, (b, w, c) => { RamSender.SendFirstPass(b, 0, w, c, skip: balloon); return true; });
        using (destination)
        {
            Assert.Equal(512UL, counters.SkippedPages);
            Assert.Equal(512UL, counters.DataPages);
            Assert.Equal(0UL, destination.Read<ulong>(8));
            Assert.Equal(Pattern(512 * 4096, 1), destination.Read<ulong>(512 * 4096));
        }
    }

    [Fact]
    public void A_dirty_pass_sends_only_dirty_pages_and_a_page_that_became_zero_is_punched_out()
    {
        using var source = NewMemory();
        Fill(source, 0, 64, 1);
        var (_, destination) = Transfer(source, (b, w, c) => { RamSender.SendFirstPass(b, 0, w, c); return true; });
        using (destination)
        {
            Fill(source, 10, 2, 2);                                   // rewritten
            source.GetWriteSpan(20 * 4096, 4096).Clear();             // became zero
            var dirty = new PageBitmap(source.Blocks[0].PageCount);
            dirty.SetRange(10 * 4096, 2 * 4096);
            dirty.Set(20);
            var (counters, _) = Transfer(source, (b, w, c) => { RamSender.SendDirty(b, 0, w, c, dirty); return true; }, destination);
            Assert.Equal(2UL, counters.DataPages);
            Assert.Equal(1UL, counters.ZeroPages);
            Assert.True(source.Blocks[0].Mapping.GetSpan(0, 64 * 4096).SequenceEqual(destination.Blocks[0].Mapping.GetSpan(0, 64 * 4096)));
        }
    }
}
