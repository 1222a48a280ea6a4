using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>The postcopy records and messages (docs/migration-stream.md, Postcopy) as hostile input: each fault refused with a named error.</summary>
public sealed class PostcopyStreamTests
{
    private static readonly BlockDescriptor[] Blocks = [new("ram-low", 1 << 20), new("ram-high", 2 << 20)];

    private static Reply Message(Action<MemoryStream> write)
    {
        using var ms = new MemoryStream();
        write(ms);
        ms.Position = 0;
        return ReturnPath.Read(ms);
    }

    private static List<Record> Records(Action<RecordWriter> write)
    {
        using var ms = new MemoryStream();
        var writer = new RecordWriter(ms);
        writer.WriteHeader(new StreamHeader((ulong)StreamCapabilities.All, 1, Blocks));
        write(writer);
        writer.Flush();
        ms.Position = 0;
        var reader = new RecordReader(ms, Blocks);
        reader.ReadHeader();
        var records = new List<Record>();
        while (ms.Position < ms.Length)
        {
            var record = reader.ReadRecord();
            records.Add(record with { Data = record.Data.ToArray() });
        }
        return records;
    }

    [Fact]
    public void Owed_pages_and_the_switch_round_trip()
    {
        var owed = new PageSet(256);
        owed.AddRange(3, 70);
        var records = Records(w =>
        {
            w.WriteOwedPages(0, 0, owed.Bytes);
            w.WritePostcopyStart(70);
        });

        Assert.Equal(RecordType.OwedPages, records[0].Type);
        Assert.Equal((0, 0UL, 256UL), (records[0].Block, records[0].PageOffset, records[0].PageCount));
        Assert.Equal(70UL, PageSet.CountIn(records[0].Data.Span));
        Assert.Equal(RecordType.PostcopyStart, records[1].Type);
        Assert.Equal(70UL, records[1].PageCount);
    }

    [Fact]
    public void An_owed_bitmap_claiming_pages_past_its_block_is_refused()
    {
        var bitmap = new byte[64];
        bitmap[63] = 0x80; // page 511 of a 256-page block
        var e = Assert.Throws<StreamFormatException>(() => Records(w => w.WriteOwedPages(0, 0, bitmap)));
        Assert.Contains("past the end of block 'ram-low'", e.Message, StringComparison.Ordinal);
    }

    private static PostcopySwitch Switch(StreamCapabilities accepted, int channels, out Record owed, out Record start)
    {
        var set = new PageSet(256);
        set.AddRange(0, 10);
        var records = Records(w =>
        {
            w.WriteOwedPages(0, 0, set.Bytes);
            w.WritePostcopyStart(10);
        });
        (owed, start) = (records[0], records[1]);
        return new PostcopySwitch(accepted, channels, [.. Blocks.Select((b, i) => RamBlock.Create(b.Name, (ulong)i << 32, b.Size, i, RamBackend.Memfd))]);
    }

    [Fact]
    public void A_destination_accepts_postcopy_only_with_postcopy_memory_and_without_verification()
    {
        using var vm = new Synthetic.SyntheticVm(2 << 20);
        using var target = new Synthetic.SyntheticTarget(vm.Blocks);
        Assert.False(PostcopySwitch.Acceptable(target, StreamCapabilities.All).HasFlag(StreamCapabilities.Postcopy));
        target.Postcopy = new Synthetic.SyntheticPostcopyMemory(target.Blocks, 1);
        Assert.True(PostcopySwitch.Acceptable(target, StreamCapabilities.All & ~StreamCapabilities.Verify).HasFlag(StreamCapabilities.Postcopy));
        // Digests are compared before the guest runs; postcopy runs it before the last pages arrive.
        var both = PostcopySwitch.Acceptable(target, StreamCapabilities.All);
        Assert.True(both.HasFlag(StreamCapabilities.Verify));
        Assert.False(both.HasFlag(StreamCapabilities.Postcopy));
        Assert.Equal(StreamCapabilities.None, PostcopySwitch.Acceptable(target, (StreamCapabilities)(1UL << 40)));
    }

    [Fact]
    public void The_switch_is_refused_unless_negotiated_on_channel_0_once_per_channel()
    {
        var notNegotiated = Switch(StreamCapabilities.All & ~StreamCapabilities.Postcopy, 2, out var owed, out var start);
        Assert.Contains("postcopy was not negotiated", Assert.Throws<StreamFormatException>(() => notNegotiated.Take(owed, 0)).Message, StringComparison.Ordinal);

        var onChannel1 = Switch(StreamCapabilities.All, 2, out owed, out start);
        Assert.Equal("channel 1: OWED_PAGES outside channel 0", Assert.Throws<StreamFormatException>(() => onChannel1.Take(owed, 1)).Message);

        var twice = Switch(StreamCapabilities.All, 2, out owed, out start);
        Assert.False(twice.Take(owed, 0));
        Assert.Contains("given twice", Assert.Throws<StreamFormatException>(() => twice.Take(owed, 0)).Message, StringComparison.Ordinal);
        Assert.True(twice.Take(start, 0));
        Assert.Equal("channel 0: a second POSTCOPY_START (duplicate switch)", Assert.Throws<StreamFormatException>(() => twice.Take(start, 0)).Message);
        Assert.Equal("OWED_PAGES after channel 0's POSTCOPY_START", Assert.Throws<StreamFormatException>(() => twice.Take(owed, 0)).Message);
        // Channel 1 never switched: the loaders' end is refused.
        Assert.Equal("channel 1 ended with END while the others switched to postcopy", Assert.Throws<StreamFormatException>(twice.CheckComplete).Message);
        Assert.True(twice.Take(start, 1));
        twice.CheckComplete();
        Assert.Equal(10UL, twice.Owed[0].Count());
    }

    [Fact]
    public void A_switch_whose_count_disagrees_with_its_bitmaps_is_refused()
    {
        var sw = Switch(StreamCapabilities.All, 1, out _, out var start);
        sw.Take(start, 0);
        Assert.Equal("POSTCOPY_START says 10 pages are owed, the OWED_PAGES records hold 0", Assert.Throws<StreamFormatException>(sw.CheckComplete).Message);
    }

    [Theory]
    [InlineData(2, 0UL, 1U, "block 2, outside the 2 blocks")]
    [InlineData(0, 0UL, 0U, "requested 0 pages at once (1..256)")]
    [InlineData(0, 0UL, 257U, "requested 257 pages at once (1..256)")]
    [InlineData(0, 256UL, 1U, "page 256 (+1) of block 'ram-low', which has 256 pages")]
    [InlineData(1, 500UL, 20U, "page 500 (+20) of block 'ram-high', which has 512 pages")]
    [InlineData(0, ulong.MaxValue, 2U, "which has 256 pages")]
    public void A_page_request_outside_the_stream_is_refused(int block, ulong first, uint count, string expected)
    {
        var reply = Message(s => PostcopyMessages.WriteRequest(s, new PageRequest(block, first, count)));
        var e = Assert.Throws<StreamFormatException>(() => PostcopyMessages.ReadRequest(reply, Blocks));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_page_request_inside_the_stream_is_read_back()
    {
        var reply = Message(s => PostcopyMessages.WriteRequest(s, new PageRequest(1, 511, 1)));
        Assert.Equal(new PageRequest(1, 511, 1), PostcopyMessages.ReadRequest(reply, Blocks));
    }

    [Fact]
    public void The_needed_pages_travel_in_parts_and_are_checked()
    {
        var needed = new PageSet(512);
        needed.Add(5);
        needed.Add(9000 % 512);
        needed.Add(511);
        using var ms = new MemoryStream();
        PostcopyMessages.WriteNeeded(ms, 1, needed);
        PostcopyMessages.WriteNeededEnd(ms, 3);
        ms.Position = 0;
        var back = new PageSet(512);
        Reply reply;
        while ((reply = ReturnPath.Read(ms)).Type == ReplyType.NeededPages)
        {
            var part = PostcopyMessages.ReadNeeded(reply, Blocks);
            Assert.Equal(1, part.Block);
            foreach (var run in PageSet.RunsIn(part.Bitmap, part.FirstPage))
                back.AddRange(run.Start, run.Length);
        }
        Assert.Equal(3UL, PostcopyMessages.ReadNeededEnd(reply));
        Assert.Equal(needed.Pages(), back.Pages());

        // A needed page past the block is refused.
        var bad = new PageSet(512);
        bad.Add(300);
        using var wrong = new MemoryStream();
        PostcopyMessages.WriteNeeded(wrong, 0, bad); // block 0 has 256 pages
        wrong.Position = 0;
        var e = Assert.Throws<StreamFormatException>(() => PostcopyMessages.ReadNeeded(ReturnPath.Read(wrong), Blocks));
        Assert.Contains("needs page 300 of block 'ram-low'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_destinations_figures_round_trip_and_a_bad_vcpu_count_is_refused()
    {
        var done = new PostcopyDoneMessage(7, 6, 1, 1000, 2000, 3000, 4000, [10, 20]);
        var back = PostcopyMessages.ReadDone(Message(s => PostcopyMessages.WriteDone(s, done)));
        Assert.Equal((7UL, 6UL, 1UL, 1000UL, 2000UL, 3000UL, 4000UL), (back.Faults, back.Requests, back.DuplicatePages, back.BlocktimeNs, back.LatencyP50Ns, back.LatencyP99Ns, back.LatencyMaxNs));
        Assert.Equal([10UL, 20UL], back.VcpuBlocktimeNs);

        var payload = new byte[64 + 8];
        payload[56] = 2; // says 2 vCPUs, carries 1
        var forged = new Reply(ReplyType.PostcopyDone, 0, "", payload);
        Assert.Contains("names 2 vCPUs", Assert.Throws<StreamFormatException>(() => PostcopyMessages.ReadDone(forged)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void The_urgent_channels_hello_is_told_from_a_bulk_channels()
    {
        var urgent = new MemoryStream(ChannelHello.Encode(42, ChannelHello.UrgentChannel));
        ChannelHello.ReadUrgent(urgent, 42);
        var bulk = new MemoryStream(ChannelHello.Encode(42, 1));
        Assert.Equal("the urgent channel's hello names channel 1", Assert.Throws<StreamFormatException>(() => ChannelHello.ReadUrgent(bulk, 42)).Message);
        var asBulk = new MemoryStream(ChannelHello.Encode(42, ChannelHello.UrgentChannel));
        Assert.Contains("outside 1..3", Assert.Throws<StreamFormatException>(() => ChannelHello.Read(asBulk, 42, 4)).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Latency_percentiles_and_blocktime_are_measured()
    {
        // The fault-to-placement latency is the memory layer's histogram (one home with the demand pager's).
        var latency = new LatencyHistogram();
        for (var i = 1; i <= 100; i++)
            latency.Record(i * 1000L);
        Assert.InRange(latency.Percentile(50).TotalNanoseconds, 50_000, 50_000 * 9 / 8);
        Assert.InRange(latency.Percentile(99).TotalNanoseconds, 99_000, 100_000);
        Assert.Equal(100_000, latency.Max.TotalNanoseconds);
        Assert.Equal(TimeSpan.Zero, new LatencyHistogram().Percentile(50));

        var f = System.Diagnostics.Stopwatch.Frequency;
        var blocktime = new PostcopyBlocktime(2);
        blocktime.Blocked(0, 10 * f);
        blocktime.Blocked(1, 11 * f);   // both blocked from 11 s
        blocktime.Woken(0, 13 * f);     // ... to 13 s
        blocktime.Woken(1, 14 * f);
        blocktime.Blocked(7, 1);        // not a vCPU: ignored
        Assert.Equal(2e9, blocktime.AllBlockedNs, 1e6);
        Assert.Equal(3e9, blocktime.PerVcpuNs()[0], 1e6);
        Assert.Equal(3e9, blocktime.PerVcpuNs()[1], 1e6);
    }
}
