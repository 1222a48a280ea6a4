using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Machine.Tests;

/// <summary>The balloon device with Ferry's guest driver: inflate/deflate, hints, reporting, poison, the extensions.</summary>
public sealed class BalloonGuestTests
{
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(60);

    private static async Task WaitUntil(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + Wait;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
                Assert.Fail($"timed out waiting until {what}");
            await Task.Delay(20);
        }
    }

    private static ulong Allocated(GuestMachine machine) => machine.Memory.Blocks.Aggregate(0UL, (sum, b) => sum + b.AllocatedBytes());

    private static async Task<BalloonDevice> ReadyBalloon(BootedGuest guest)
    {
        var balloon = guest.Machine.Balloon!;
        await WaitUntil(() => balloon.DriverReady, "the guest's balloon driver is ready");
        return balloon;
    }

    [KvmFact]
    public async Task Inflating_to_leave_ten_percent_returns_the_memory_and_deflating_gives_it_back()
    {
        const ulong memoryMib = 1024;
        using var guest = await BootedGuest.StartAsync(memoryMib);
        var balloon = await ReadyBalloon(guest);
        Assert.True(balloon.MustTellHost);
        await guest.Cmd("fill 900");
        await guest.Cmd("free");
        var freeBefore = (await guest.Cmd("stats")).GetProperty("free_bytes").GetUInt64();
        var allocatedBefore = Allocated(guest.Machine);

        var target = (uint)(memoryMib * 256 * 9 / 10);
        balloon.SetTargetPages(target);
        await WaitUntil(() => balloon.ActualPages == target, $"the balloon holds {target} pages");
        var inflatedBytes = (ulong)target * 4096;
        var returned = allocatedBefore - Allocated(guest.Machine);
        Assert.True(returned >= inflatedBytes * 85 / 100, $"host allocation fell by {returned >> 20} MiB for {inflatedBytes >> 20} MiB inflated");
        Assert.Equal((ulong)target, guest.Machine.Memory.Blocks.Aggregate(0UL, (s, b) => s + balloon.BalloonBitmap(b).Count()));
        var stats = await guest.Cmd("stats");
        Assert.Equal(freeBefore - inflatedBytes, stats.GetProperty("free_bytes").GetUInt64());
        Assert.Equal(inflatedBytes, stats.GetProperty("balloon_bytes").GetUInt64());

        balloon.SetTargetPages(0);
        await WaitUntil(() => balloon.ActualPages == 0, "the balloon is empty");
        Assert.Equal(0UL, guest.Machine.Memory.Blocks.Aggregate(0UL, (s, b) => s + balloon.BalloonBitmap(b).Count()));
        Assert.Equal(freeBefore, (await guest.Cmd("stats")).GetProperty("free_bytes").GetUInt64());
        await guest.Cmd($"fill {freeBefore / (1 << 20) - 8}");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task A_hint_run_hands_over_most_free_memory_and_none_of_the_guests_pages()
    {
        using var guest = await BootedGuest.StartAsync(1024);
        var balloon = await ReadyBalloon(guest);
        var fill = await guest.Cmd("fill 200");
        var free = (await guest.Cmd("stats")).GetProperty("free_bytes").GetUInt64();
        var held = new HashSet<ulong>();
        foreach (var range in fill.GetProperty("ranges").EnumerateArray())
        {
            for (var a = range[0].GetUInt64(); a < range[0].GetUInt64() + range[1].GetUInt64(); a += 4096)
                held.Add(a / 4096);
        }

        balloon.StartFreePageHinting();
        await WaitUntil(() => balloon.HintStatus.State == FreePageHintState.Stopped, "the guest has no more free blocks to hint");
        var hinted = balloon.HintedPages(guest.Machine.Memory.Blocks[0])!;
        Assert.True(hinted.Count() * 4096 >= free * 9 / 10, $"hinted {hinted.Count() * 4096 >> 20} MiB of {free >> 20} MiB free");
        Assert.DoesNotContain(hinted.Pages(), held.Contains);
        var during = (await guest.Cmd("balloon")).GetProperty("hinted_pages").GetUInt64();
        Assert.Equal(hinted.Count(), during);

        balloon.FinishFreePageHinting();
        await WaitUntil(() => guest.Console.CommandAsync("balloon").Result.GetProperty("hinted_pages").GetUInt64() == 0, "the guest freed the hinted blocks");
        Assert.Equal(free, (await guest.Cmd("stats")).GetProperty("free_bytes").GetUInt64());
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task Free_page_reporting_shrinks_the_host_allocation_after_a_large_free()
    {
        using var guest = await BootedGuest.StartAsync(1024, commandLine: "report_delay_ms=200");
        var balloon = await ReadyBalloon(guest);
        await guest.Cmd("fill 512");
        var filled = Allocated(guest.Machine);
        await guest.Cmd("free");
        await WaitUntil(() => filled - Allocated(guest.Machine) >= 400UL << 20, "reporting gave back most of the freed 512 MiB");
        Assert.True(balloon.Counters.DiscardedReportedPages * 4096 >= 400UL << 20);
        await guest.Cmd("fill 512");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task With_a_nonzero_poison_value_nothing_reported_is_discarded()
    {
        using var guest = await BootedGuest.StartAsync(512, commandLine: "free_mode=poison poison=0xaa report_delay_ms=200");
        var balloon = await ReadyBalloon(guest);
        Assert.True(balloon.Has(BalloonDevice.PAGE_POISON));
        Assert.Equal(0xAAAA_AAAAu, balloon.PoisonValue);
        await guest.Cmd("fill 256");
        var filled = Allocated(guest.Machine);
        await guest.Cmd("free");
        await WaitUntil(() => balloon.Counters.ReportedPages >= 32768, "the guest reported the freed memory");
        Assert.Equal(0UL, balloon.Counters.DiscardedReportedPages);
        Assert.True(Allocated(guest.Machine) >= filled, "reported pages were discarded despite poisoning");
        // The poison is still there: a freed page reads 0xaa, not zero.
        Assert.Equal(0xAA, guest.Machine.Memory.Read<byte>(guest.Machine.Memory.Blocks[0].Size / 2));
    }

    private static async Task<ulong[]> InflatedPages(string commandLine, bool expectBitmaps)
    {
        using var guest = await BootedGuest.StartAsync(512, commandLine: commandLine);
        var balloon = await ReadyBalloon(guest);
        await guest.Cmd("fill 100");
        balloon.SetTargetPages(50_000);
        await WaitUntil(() => balloon.ActualPages == 50_000, "the balloon holds 50000 pages");
        balloon.SetTargetPages(20_000);
        await WaitUntil(() => balloon.ActualPages == 20_000, "the balloon deflated to 20000 pages");
        var usesBitmaps = balloon.Has(BalloonDevice.FERRY_F_PAGE_BITMAP);
        Assert.Equal(expectBitmaps, usesBitmaps);
        Assert.Equal(usesBitmaps, balloon.Counters.BitmapMessages > 0);
        return [.. balloon.BalloonBitmap(guest.Machine.Memory.Blocks[0]).Pages()];
    }

    [KvmFact]
    public async Task The_bitmap_extension_inflates_exactly_the_pages_the_PFN_path_would()
    {
        var viaPfns = await InflatedPages("balloon_features=0x10000003f", expectBitmaps: false);
        var viaBitmaps = await InflatedPages("", expectBitmaps: true);
        Assert.Equal(20_000, viaPfns.Length);
        Assert.Equal(viaPfns, viaBitmaps);
    }

    [KvmFact]
    public async Task The_free_page_bitmap_matches_the_allocators_free_pages()
    {
        using var guest = await BootedGuest.StartAsync(512);
        var balloon = await ReadyBalloon(guest);
        var fill = await guest.Cmd("fill 100");
        var stats = await guest.Cmd("stats");
        var result = await balloon.RequestFreePageBitmapAsync(dropCaches: false, Wait);
        Assert.Equal(stats.GetProperty("free_bytes").GetUInt64() / 4096, result.FreePages);
        var start = fill.GetProperty("ranges")[0][0].GetUInt64() / 4096;
        Assert.False(result.Blocks[0].Contains(start));
        Assert.Equal(0UL, result.DroppedOutsideRamPages);
    }

    [KvmFact]
    public async Task Dropping_caches_first_adds_the_cache_pages_to_the_free_bitmap()
    {
        using var guest = await BootedGuest.StartAsync(512);
        var balloon = await ReadyBalloon(guest);
        await guest.Cmd("cache 64");
        var without = await balloon.RequestFreePageBitmapAsync(dropCaches: false, Wait);
        var with = await balloon.RequestFreePageBitmapAsync(dropCaches: true, Wait);
        Assert.Equal(without.FreePages + 64 * 256, with.FreePages);
        Assert.Equal(0UL, (await guest.Cmd("stats")).GetProperty("cache_bytes").GetUInt64());
    }

    [KvmFact]
    public async Task Deflate_on_oom_takes_pages_back_from_the_balloon_telling_the_host_first()
    {
        using var guest = await BootedGuest.StartAsync(512);
        var balloon = await ReadyBalloon(guest);
        Assert.True(balloon.Has(BalloonDevice.DEFLATE_ON_OOM));
        balloon.SetTargetPages(256 * 300);
        await WaitUntil(() => balloon.ActualPages == 256 * 300, "the balloon holds 300 MiB");
        var free = (await guest.Cmd("stats")).GetProperty("free_bytes").GetUInt64();
        await guest.Cmd($"fill {free / (1 << 20) + 100}");
        var state = await guest.Cmd("balloon");
        Assert.True(state.GetProperty("oom_deflated_pages").GetUInt64() >= 99 * 256, state.ToString()); // fill asked for free MiB (rounded down) + 100
        Assert.True(balloon.Counters.DeflatedPages >= 99 * 256, "the host was not told about the pages taken back");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task Guest_statistics_come_from_the_stats_queue()
    {
        using var guest = await BootedGuest.StartAsync(512);
        var balloon = await ReadyBalloon(guest);
        await guest.Cmd("fill 100");
        var stats = await balloon.RequestStatsAsync(Wait);
        var guestStats = await guest.Cmd("stats");
        Assert.Equal(guestStats.GetProperty("free_bytes").GetUInt64(), stats[4]);   // MEMFREE
        Assert.Equal(guestStats.GetProperty("total_bytes").GetUInt64(), stats[5]);  // MEMTOT
    }
}
