using System.Buffers.Binary;
using Ferry.Devices.Virtio;
using Ferry.Devices.Virtio.Balloon;
using Xunit;

namespace Ferry.Devices.Tests.Virtio;

/// <summary>The balloon device's semantics, driven by a scripted driver over synthetic memory (no KVM).</summary>
public sealed class BalloonDeviceTests
{
    // Queue numbers with every feature negotiated.
    private const int Inflate = 0, Deflate = 1, Stats = 2, FreePage = 3, Reporting = 4, FreeBitmap = 5;
    private static readonly ulong StandardOnly = FakeDriver.AllFeatures(62, 63);

    private static void Touch(FakeDriver d, ulong address, ulong length) => d.Memory.GetWriteSpan(address, (int)length).Fill(0xA5);

    [Fact]
    public void Inflate_discards_pages_and_sets_the_bitmap_deflate_clears_it()
    {
        using var d = new FakeDriver();
        d.Negotiate(StandardOnly, 6);
        var block = d.Memory.Blocks[0];
        Touch(d, 16 << 20, 1 << 20);
        var before = block.AllocatedBytes();
        var pfns = Enumerable.Range(4096, 256).Select(p => (uint)p).ToArray();
        d.Post(Inflate, (d.PutPfns(pfns), 1024, false));
        d.Kick(Inflate);
        Assert.Single(d.TakeUsed(Inflate));
        var bitmap = d.Balloon.BalloonBitmap(block);
        Assert.Equal(256UL, bitmap.Count());
        Assert.True(bitmap.Contains(4096) && bitmap.Contains(4351) && !bitmap.Contains(4352));
        Assert.True(before - block.AllocatedBytes() >= 1 << 20, "the inflated MiB was not given back to the host");
        Assert.Equal(0, d.Memory.Read<byte>((16 << 20) + 77));

        d.Post(Deflate, (d.PutPfns(pfns[..128]), 512, false));
        d.Kick(Deflate);
        Assert.Equal(128UL, bitmap.Count());
        Assert.False(bitmap.Contains(4096));
        Assert.True(bitmap.Contains(4351));
    }

    [Fact]
    public void PFNs_outside_RAM_are_dropped_and_counted()
    {
        using var d = new FakeDriver();
        d.Negotiate(StandardOnly, 6);
        d.Post(Inflate, (d.PutPfns(10, 0x4_0000, 0xFFFF_FFFF, 11), 16, false));
        d.Kick(Inflate);
        Assert.Equal(2UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal(2UL, d.Balloon.Counters.DroppedPfns);
        Assert.Equal(2, d.Log.Count(VirtioFaults.BufferOutsideRam));
    }

    [Fact]
    public void The_spec_s_fixed_queue_numbers_are_understood()
    {
        using var d = new FakeDriver();
        // Without STATS_VQ and FREE_PAGE_HINT, a driver following the spec puts reporting at queue 4.
        d.Negotiate(FakeDriver.AllFeatures(1, 3, 62, 63), [0, 1, 4]);
        Assert.True(d.Balloon.UsesFixedQueueNumbers);
        Touch(d, 8 << 20, 4 << 20);
        var before = d.Memory.Blocks[0].AllocatedBytes();
        d.Post(4, (8 << 20, 4 << 20, true));
        d.Kick(4);
        Assert.Equal(1024UL, d.Balloon.Counters.ReportedPages);
        Assert.True(before - d.Memory.Blocks[0].AllocatedBytes() >= 4 << 20);
    }

    [Fact]
    public void Compacted_queue_numbers_of_older_Linux_drivers_are_understood()
    {
        using var d = new FakeDriver();
        // Without STATS_VQ and FREE_PAGE_HINT, Linux before 6.11 puts reporting at queue 2.
        d.Negotiate(FakeDriver.AllFeatures(1, 3, 62, 63), 3);
        Assert.False(d.Balloon.UsesFixedQueueNumbers);
        Touch(d, 8 << 20, 4 << 20);
        var before = d.Memory.Blocks[0].AllocatedBytes();
        d.Post(2, (8 << 20, 4 << 20, true));
        d.Kick(2);
        Assert.Equal(1024UL, d.Balloon.Counters.ReportedPages);
        Assert.True(before - d.Memory.Blocks[0].AllocatedBytes() >= 4 << 20);
    }

    private static byte[] BitmapMessage(ushort command, ulong startPfn, IEnumerable<ulong> pfns, int bitmapBytes, ushort flags = 0, ulong requestId = 0, ushort pageShift = 12)
    {
        var message = new byte[32 + bitmapBytes];
        BinaryPrimitives.WriteUInt16LittleEndian(message, command);
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(2), pageShift);
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(4), flags);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(8), requestId);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(16), startPfn);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(24), (ulong)bitmapBytes);
        foreach (var pfn in pfns)
        {
            var bit = pfn - startPfn;
            message[32 + (int)(bit / 8)] |= (byte)(1 << (int)(bit % 8));
        }
        return message;
    }

    [Fact]
    public void The_bitmap_extension_inflates_exactly_what_the_PFN_path_does()
    {
        var pfns = new ulong[] { 4096, 4097, 4098, 5000, 6001, 6002, 8191 };
        using var viaPfns = new FakeDriver();
        viaPfns.Negotiate(StandardOnly, 6);
        viaPfns.Post(Inflate, (viaPfns.PutPfns([.. pfns.Select(p => (uint)p)]), (uint)(4 * pfns.Length), false));
        viaPfns.Kick(Inflate);

        using var viaBitmap = new FakeDriver();
        viaBitmap.Negotiate(FakeDriver.AllFeatures(), 6);
        var message = BitmapMessage(0, 4096, pfns, 512);
        viaBitmap.Memory.Write(FakeDriver.BufferBase, message);
        // Header and bitmap in two descriptors, as the guest's chunks arrive.
        viaBitmap.Post(Inflate, (FakeDriver.BufferBase, 32, false), (FakeDriver.BufferBase + 32, 512, false));
        viaBitmap.Kick(Inflate);

        var a = viaPfns.Balloon.BalloonBitmap(viaPfns.Memory.Blocks[0]).Pages().ToArray();
        var b = viaBitmap.Balloon.BalloonBitmap(viaBitmap.Memory.Blocks[0]).Pages().ToArray();
        Assert.Equal(pfns, a);
        Assert.Equal(a, b);
        Assert.Equal(1UL, viaBitmap.Balloon.Counters.BitmapMessages);
    }

    [Theory]
    [InlineData("shift")]
    [InlineData("len-not-8")]
    [InlineData("len-past-data")]
    [InlineData("short")]
    [InlineData("start-unaligned")]
    public void Malformed_bitmap_messages_are_refused_and_apply_nothing(string damage)
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var message = BitmapMessage(0, 4096, [4096, 4100], 64, pageShift: damage == "shift" ? (ushort)13 : (ushort)12);
        if (damage == "len-not-8")
            BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(24), 60);
        if (damage == "len-past-data")
            BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(24), 4096);
        if (damage == "start-unaligned")
            BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(16), 4097);
        var length = damage == "short" ? 20u : (uint)message.Length;
        d.Memory.Write(FakeDriver.BufferBase, message);
        d.Post(Inflate, (FakeDriver.BufferBase, length, false));
        d.Kick(Inflate);
        Assert.Single(d.TakeUsed(Inflate));
        Assert.Equal(0UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal(1, d.Log.Count(VirtioFaults.BadRequest));
    }

    private static ulong PutStats(FakeDriver d, ulong address, params (ushort Tag, ulong Value)[] stats)
    {
        for (var i = 0; i < stats.Length; i++)
        {
            d.Memory.Write(address + 10UL * (ulong)i, stats[i].Tag);
            d.Memory.Write(address + 10UL * (ulong)i + 2, stats[i].Value);
        }
        return address;
    }

    [Fact]
    public async Task Stats_are_collected_from_the_held_buffer_on_request()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var buffer = PutStats(d, FakeDriver.BufferBase, (4, 100), (5, 1000));
        var head = d.Post(Stats, (buffer, 20, false));
        d.Kick(Stats);
        Assert.Empty(d.TakeUsed(Stats)); // held by the device
        Assert.Equal(100UL, d.Balloon.LastStats.Stats[4]);

        var request = d.Balloon.RequestStatsAsync(TimeSpan.FromSeconds(5));
        Assert.Contains(d.TakeUsed(Stats), u => u.Head == head); // returned: "send fresh stats"
        PutStats(d, buffer, (4, 42), (5, 1000));
        d.Post(Stats, (buffer, 20, false));
        d.Kick(Stats);
        var stats = await request;
        Assert.Equal(42UL, stats[4]);
        Assert.Equal(1000UL, stats[5]);
    }

    private static void SendCmdId(FakeDriver d, uint id)
    {
        var address = FakeDriver.BufferBase + 0x1000;
        d.Memory.Write(address, id);
        d.Post(FreePage, (address, 4, false));
        d.Kick(FreePage);
    }

    [Fact]
    public void A_hint_run_delivers_validated_hints_drops_stale_ones_and_never_discards()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var block = d.Memory.Blocks[0];
        var hints = new List<FreePageHint>();
        d.Balloon.FreePageHinted += hints.Add;
        Touch(d, 32 << 20, 8 << 20);
        var allocated = block.AllocatedBytes();

        var id = d.Balloon.StartFreePageHinting();
        Assert.Equal(0x8000_0001u, id); // QEMU's first cmd_id
        Assert.Equal(id, d.ReadConfig32(8));
        SendCmdId(d, id);
        d.Post(FreePage, (32 << 20, 4 << 20, true));
        d.Post(FreePage, (36 << 20, 4 << 20, true));
        d.Kick(FreePage);
        Assert.Equal(FreePageHintState.Active, d.Balloon.HintStatus.State);
        Assert.Equal(2048UL, d.Balloon.HintStatus.HintedPages);
        Assert.Equal(2, hints.Count);
        Assert.All(hints, h => Assert.Equal(id, h.CommandId));
        Assert.Equal(allocated, block.AllocatedBytes()); // hints never discard memory

        // A hint under an older id is dropped.
        SendCmdId(d, id - 1);
        d.Post(FreePage, (48 << 20, 4 << 20, true));
        d.Kick(FreePage);
        Assert.Equal(2048UL, d.Balloon.HintStatus.HintedPages);
        Assert.Equal(1UL, d.Balloon.HintStatus.DroppedStaleHints);

        d.Balloon.StopFreePageHinting();
        Assert.Equal(BalloonDevice.CmdIdStop, d.ReadConfig32(8));
        d.Post(FreePage, (52 << 20, 4 << 20, true));
        d.Kick(FreePage);
        Assert.Equal(2048UL, d.Balloon.HintStatus.HintedPages);
        d.Balloon.FinishFreePageHinting();
        Assert.Equal(BalloonDevice.CmdIdDone, d.ReadConfig32(8));
        var next = d.Balloon.StartFreePageHinting();
        Assert.Equal(id + 1, next);
    }

    [Theory]
    [InlineData(0u, true)]
    [InlineData(0xAAAA_AAAAu, false)]
    public void Reported_pages_are_discarded_only_when_poisoning_allows(uint poison, bool discarded)
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6, poisonValue: poison);
        Assert.Equal(poison, d.Balloon.PoisonValue);
        Touch(d, 8 << 20, 4 << 20);
        var before = d.Memory.Blocks[0].AllocatedBytes();
        d.Post(Reporting, (8 << 20, 2 << 20, true), (10 << 20, 2 << 20, true));
        d.Kick(Reporting);
        Assert.Single(d.TakeUsed(Reporting));
        Assert.Equal(1024UL, d.Balloon.Counters.ReportedPages);
        var freed = before - d.Memory.Blocks[0].AllocatedBytes();
        if (discarded)
            Assert.True(freed >= 4 << 20);
        else
            Assert.Equal(0UL, freed);
    }

    [Fact]
    public void Every_range_discarded_on_the_guest_s_word_is_announced_once()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(except: BalloonDevice.FERRY_F_PAGE_BITMAP), 6); // PFN arrays
        var discarded = new List<(string Block, ulong Offset, ulong Length)>();
        d.Balloon.PagesDiscarded += (block, offset, length) => discarded.Add((block.Name, offset, length));
        d.Post(Inflate, (d.PutPfns(4096, 4097, 4099), 12, false));
        d.Kick(Inflate);
        d.Post(Inflate, (d.PutPfns(4097, 4100), 8, false)); // 4097 is in the balloon already: not discarded again
        d.Kick(Inflate);
        d.Post(Reporting, (8 << 20, 2 << 20, true));
        d.Kick(Reporting);
        var block = d.Memory.Blocks[0].Name;
        Assert.Equal([(block, 4096UL << 12, 8192UL), (block, 4099UL << 12, 4096UL), (block, 4100UL << 12, 4096UL), (block, 8UL << 20, 2UL << 20)], discarded);
    }

    [Fact]
    public async Task The_free_page_bitmap_is_requested_and_collected_by_request_id()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var requestBuffer = FakeDriver.BufferBase + 0x10000;
        var requestHead = d.Post(FreeBitmap, (requestBuffer, 16, true));
        d.Kick(FreeBitmap);
        var pending = d.Balloon.RequestFreePageBitmapAsync(dropCaches: true, TimeSpan.FromSeconds(5));
        var used = d.TakeUsed(FreeBitmap);
        Assert.Contains(used, u => u.Head == requestHead && u.Length == 16);
        Assert.Equal(1, d.Memory.Read<ushort>(requestBuffer));          // GET_FREE_PAGES
        Assert.Equal(1, d.Memory.Read<ushort>(requestBuffer + 2));      // drop caches
        var requestId = d.Memory.Read<ulong>(requestBuffer + 8);

        // A reply for another request is ignored; the real one (two windows) completes the request.
        var wrong = BitmapMessage(1, 0, [100], 64, flags: 1, requestId: requestId + 7);
        d.Memory.Write(FakeDriver.BufferBase, wrong);
        d.Post(FreeBitmap, (FakeDriver.BufferBase, (uint)wrong.Length, false));
        d.Kick(FreeBitmap);
        Assert.False(pending.IsCompleted);
        var first = BitmapMessage(1, 0, [100, 101, 102], 64, flags: 0, requestId: requestId);
        d.Memory.Write(FakeDriver.BufferBase, first);
        d.Post(FreeBitmap, (FakeDriver.BufferBase, (uint)first.Length, false));
        d.Kick(FreeBitmap);
        var last = BitmapMessage(1, 8192, [8192, 16383, 20000], 2048, flags: 1, requestId: requestId);
        d.Memory.Write(FakeDriver.BufferBase, last);
        d.Post(FreeBitmap, (FakeDriver.BufferBase, (uint)last.Length, false));
        d.Kick(FreeBitmap);
        var result = await pending;
        Assert.Equal(requestId, result.RequestId);
        Assert.Equal(5UL, result.FreePages);           // pfn 20000 lies past the 64 MiB of RAM
        Assert.Equal(1UL, result.DroppedOutsideRamPages);
        Assert.True(result.Blocks[0].Contains(16383));
    }

    [Fact]
    public void A_device_reset_forgets_the_balloon()
    {
        using var d = new FakeDriver();
        d.Negotiate(StandardOnly, 6);
        d.Post(Inflate, (d.PutPfns(4096, 4097), 8, false));
        d.Kick(Inflate);
        Assert.Equal(2UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        d.SetReg(0x70, 0);
        Assert.Equal(0UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
    }

    [Fact]
    public void Fuzz_regression_state_with_a_held_stats_buffer_restores_while_the_device_needs_a_reset()
    {
        // Found by the virtio fuzz harness (its seed fuzz/corpus/virtio/seed-chains-and-host): the balloon
        // rebuilt its queue roles only when DriverOk, which is false once DEVICE_NEEDS_RESET is set, so the held
        // stats buffer of such a device could be saved but never restored.
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        d.Post(Stats, (PutStats(d, FakeDriver.BufferBase, (4, 100)), 10, false));
        d.Kick(Stats);
        d.PublishHead(Deflate, 200); // a head past the queue: the device needs a reset
        d.Kick(Deflate);
        Assert.NotEqual(0u, d.Transport.Status & VirtioBits.StatusNeedsReset);
        var transport = d.Transport.SaveState();
        var balloon = d.Balloon.SaveState();

        using var e = new FakeDriver();
        e.Transport.RestoreState(transport);
        e.Balloon.RestoreState(balloon);
        Assert.Equal(balloon, e.Balloon.SaveState());
        Assert.Equal(transport, e.Transport.SaveState());
    }

    [Fact]
    public void Fuzz_regression_chains_repeating_the_same_PFNs_inflate_each_page_once()
    {
        // Found by the virtio fuzz harness as a hang (fuzz/corpus/virtio/regress-repeated-pfns-slow-inflate):
        // every descriptor of the queue pointed at one 64 KiB PFN buffer, and each PFN was punched out of the
        // memfd again (millions of fallocate calls in one notify, under the device lock). Pages already in the
        // balloon are now only counted.
        using var d = new FakeDriver();
        d.Negotiate(StandardOnly, 6);
        var pfns = Enumerable.Range(0, 8192).Select(i => (uint)(2 * i)).ToArray();
        var buffer = d.PutPfns(pfns);
        for (var i = 0; i < FakeDriver.QueueSize; i++)
            d.Post(Inflate, (buffer, (uint)pfns.Length * 4, false));
        d.Kick(Inflate);
        Assert.Equal(FakeDriver.QueueSize, d.TakeUsed(Inflate).Count);
        Assert.Equal(8192UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
    }
}

/// <summary>The work one queue notify may do (docs/virtio-balloon.md, Work per notify), counted in bytes read and page runs applied.</summary>
public sealed class BalloonNotifyBudgetTests
{
    private const int Inflate = 0;
    private const ulong MiB = 1UL << 20;

    /// <summary>An inflate bitmap message at <paramref name="address"/> naming every other page from <paramref name="startPfn"/> for <paramref name="pages"/> pages (pages / 2 runs), or every page (one run).</summary>
    private static uint PutMessage(FakeDriver d, ulong address, ulong startPfn, int pages, bool alternate)
    {
        var message = new byte[32 + pages / 8];
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(2), 12);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(16), startPfn);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(24), (ulong)(pages / 8));
        message.AsSpan(32).Fill(alternate ? (byte)0x55 : (byte)0xFF);
        d.Memory.Write(address, message);
        return (uint)message.Length;
    }

    [Fact]
    public void Fuzz_regression_one_notify_of_many_1_MiB_bitmap_messages_does_a_bounded_amount_of_work()
    {
        // fuzz/corpus/virtio/regress-slow-notify-bitmap-messages: every descriptor of the queue pointed at one 1 MiB
        // bitmap message, and one notify copied and walked all of them (256 MiB, seconds on the vCPU thread under
        // the device lock). Now a notify stops taking buffers once it has read its budget; the rest waits for the
        // next notify, and each notify's work stays within the budget plus one message.
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var length = PutMessage(d, FakeDriver.BufferBase, 4096, 8 << 20, alternate: false); // 1 MiB of bitmap
        d.Memory.Write(FakeDriver.BufferBase + 32, new byte[1 << 20]);
        d.Memory.Write(FakeDriver.BufferBase + 32 + 2, (byte)0x0F);                         // pages 4112..4115
        for (var i = 0; i < FakeDriver.QueueSize; i++)
            d.Post(Inflate, (FakeDriver.BufferBase, length, false));

        var notifies = 0;
        var used = 0;
        while (used < FakeDriver.QueueSize)
        {
            d.Kick(Inflate);
            notifies++;
            var returned = d.TakeUsed(Inflate).Count;
            Assert.InRange(returned, 1, 2);
            used += returned;
            var counters = d.Balloon.Counters;
            Assert.True(counters.LargestNotifyBytes < BalloonDevice.NotifyByteBudget + length, $"{counters.LargestNotifyBytes} bytes read in one notify");
            Assert.True(counters.LargestNotifyRuns <= 2, $"{counters.LargestNotifyRuns} runs in one notify");
        }
        Assert.Equal(8, notifies);
        Assert.Equal(7UL, d.Balloon.Counters.DeferredNotifies);
        Assert.Equal(4UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
    }

    [Fact]
    public void A_bitmap_message_naming_more_runs_than_allowed_is_refused_and_applies_nothing()
    {
        using var d = new FakeDriver(lowMiB: 512);
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        // 2 * MaxRunsPerMessage + 2 pages, every other one: one run too many.
        var pages = 2 * BalloonDevice.MaxRunsPerMessage + 64;
        var length = PutMessage(d, FakeDriver.BufferBase, 4096, pages, alternate: true);
        d.Post(Inflate, (FakeDriver.BufferBase, length, false));
        d.Kick(Inflate);
        Assert.Single(d.TakeUsed(Inflate));
        Assert.Equal(0UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal(1, d.Log.Count(VirtioFaults.BadRequest));
        Assert.Contains(d.Warnings, w => w.Contains($"names {BalloonDevice.MaxRunsPerMessage + 32} runs of pages (at most {BalloonDevice.MaxRunsPerMessage})", StringComparison.Ordinal));
    }

    [Fact]
    public void A_well_behaved_driver_s_large_fragmented_inflate_completes_one_message_per_notify()
    {
        // 512 MiB of RAM; the driver gives back every other page of 384 MiB, 32,768 pages a message (16,384 runs, the
        // most a message may name), waiting for each message before the next, as Ferry's guest does.
        using var d = new FakeDriver(lowMiB: 512);
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        for (var m = 0; m < 3; m++)
        {
            var length = PutMessage(d, FakeDriver.BufferBase, 16384 + (ulong)m * 32768, 32768, alternate: true);
            d.Post(Inflate, (FakeDriver.BufferBase, length, false));
            d.Kick(Inflate);
            Assert.Single(d.TakeUsed(Inflate));
        }
        Assert.Equal(3UL * 16384, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal((ulong)BalloonDevice.MaxRunsPerMessage, d.Balloon.Counters.LargestNotifyRuns);
        Assert.Equal(0UL, d.Balloon.Counters.DeferredNotifies);
        Assert.Equal(0, d.Log.Count(VirtioFaults.BadRequest));

        // And many small messages posted at once are all taken by one notify: far under the budget.
        for (var i = 0; i < FakeDriver.QueueSize; i++)
        {
            var address = FakeDriver.BufferBase + (ulong)i * 0x2000;
            d.Post(Inflate, (address, PutMessage(d, address, 114688 + (ulong)i * 1024, 1024, alternate: false), false));
        }
        d.Kick(Inflate);
        Assert.Equal(FakeDriver.QueueSize, d.TakeUsed(Inflate).Count);
        Assert.Equal(3UL * 16384 + FakeDriver.QueueSize * 1024UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal(0UL, d.Balloon.Counters.DeferredNotifies);
    }
}

public sealed class BalloonActivationTests
{
    [Fact]
    public void Buffers_posted_before_DRIVER_OK_are_read_when_the_driver_becomes_ready()
    {
        using var d = new FakeDriver();
        // Negotiate, set up the stats queue and post a buffer, kick, and only then set DRIVER_OK (Linux's order).
        d.SetReg(0x70, 0);
        d.SetReg(0x70, 3);
        d.SetReg(0x24, 1);
        d.SetReg(0x20, 1);            // VERSION_1
        d.SetReg(0x24, 0);
        d.SetReg(0x20, 0x3);          // MUST_TELL_HOST | STATS_VQ
        d.SetReg(0x70, 11);
        for (var q = 0; q < 3; q++)
        {
            var ring = FakeDriver.DescTable(q);
            d.SetReg(0x30, (uint)q);
            d.SetReg(0x38, FakeDriver.QueueSize);
            d.SetReg(0x80, (uint)ring);
            d.SetReg(0x90, (uint)(ring + 0x1000));
            d.SetReg(0xA0, (uint)(ring + 0x2000));
            d.SetReg(0x44, 1);
        }
        d.Memory.Write(FakeDriver.BufferBase, (ushort)4);
        d.Memory.Write(FakeDriver.BufferBase + 2, 12345UL);
        d.Post(2, (FakeDriver.BufferBase, 10, false));
        d.Kick(2);
        Assert.Empty(d.Balloon.LastStats.Stats);
        d.SetReg(0x70, 15);
        Assert.Equal(12345UL, d.Balloon.LastStats.Stats[4]);
    }

    [Fact]
    public void Setting_the_same_target_again_signals_the_driver_again()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        d.Balloon.SetTargetPages(100);
        var generation = d.Reg(0xFC);
        d.Balloon.SetTargetPages(100);
        Assert.Equal(generation + 1, d.Reg(0xFC));
    }
}

public sealed class DeviceWritesTests
{
    [Fact]
    public void Used_ring_and_buffer_writes_by_the_device_are_in_the_VMM_dirty_bitmap()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var block = d.Memory.Blocks[0];
        block.VmmDirty.Clear();
        d.Post(5, (FakeDriver.BufferBase + 0x10000, 16, true));  // free-bitmap request buffer, held by the device
        d.Kick(5);
        block.VmmDirty.Clear();                                    // the fake driver's own writes are not the point
        _ = d.Balloon.RequestFreePageBitmapAsync(false, TimeSpan.FromSeconds(1));
        var usedRingPage = (FakeDriver.DescTable(5) + 0x2000) / 4096;
        var bufferPage = (FakeDriver.BufferBase + 0x10000) / 4096;
        Assert.Equal(new[] { bufferPage, usedRingPage }.Order(), block.VmmDirty.Pages());
    }
}
