using Ferry.Machine;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Machine.Tests;

/// <summary>Ferry's guest under KVM: boot, the shell, RAM accounting, fill and verify.</summary>
public sealed class GuestBootTests
{
    [KvmFact]
    public async Task Guest_boots_to_its_shell_and_answers_a_command()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128);
        Assert.Equal(1, guest.Ready.GetProperty("version").GetInt32());
        var stats = await guest.Cmd("stats");
        Assert.Equal("stats", stats.GetProperty("cmd").GetString());
        var unknown = await guest.Console.CommandAsync("frobnicate 3");
        Assert.False(unknown.GetProperty("ok").GetBoolean());
        Assert.Contains("frobnicate", unknown.GetProperty("error").GetString(), StringComparison.Ordinal);
    }

    [KvmFact]
    public async Task Reported_RAM_is_the_configured_memory_minus_what_the_guest_reserves()
    {
        const ulong memoryMib = 256;
        using var guest = await BootedGuest.StartAsync(memoryMib);
        var ready = guest.Ready;
        var ram = ready.GetProperty("ram_bytes").GetUInt64();
        var usable = ready.GetProperty("usable_bytes").GetUInt64();
        var reserved = ready.GetProperty("reserved_bytes").GetUInt64();
        Assert.Equal(memoryMib * GuestLayout.MiB, ram);
        Assert.Equal(ram, usable + reserved);
        // VMM structures (1 MiB) + the guest image with its 64 stacks (4 MiB) + allocator metadata (16 B per page).
        Assert.InRange(reserved, GuestLayout.MiB, 8 * GuestLayout.MiB);
        var stats = await guest.Cmd("stats");
        Assert.Equal(usable, stats.GetProperty("total_bytes").GetUInt64());
        Assert.Equal(usable, stats.GetProperty("free_bytes").GetUInt64());
        var perOrder = stats.GetProperty("free_pages_per_order").EnumerateArray().Select(e => e.GetUInt64()).ToArray();
        Assert.Equal(11, perOrder.Length);
        var fromOrders = perOrder.Select((count, order) => count << order).Aggregate(0UL, (a, b) => a + b) * 4096;
        Assert.Equal(usable, fromOrders);
    }

    [KvmFact]
    public async Task Fill_one_GiB_then_verify_passes()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 1280);
        var fill = await guest.Cmd("fill 1024");
        Assert.Equal(262144UL, fill.GetProperty("pages").GetUInt64());
        var verify = await guest.Cmd("verify");
        Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
        Assert.Equal(262144UL, verify.GetProperty("pages_checked").GetUInt64());
        Assert.Equal(0UL, verify.GetProperty("failures").GetUInt64());
    }

    [KvmFact]
    public async Task A_byte_flipped_by_the_VMM_is_caught_by_verify_at_its_address()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 256);
        var fill = await guest.Cmd("fill 32");
        var range = fill.GetProperty("ranges")[0];
        var start = range[0].GetUInt64();
        var generation = fill.GetProperty("generation").GetUInt64();
        var target = start + 5 * 4096 + 123;         // a byte inside the 6th filled page
        var word = target & ~7UL;
        Assert.Equal(FillPattern.Word(word, generation), guest.Machine.Memory.Read<ulong>(word));
        guest.Machine.Pause();
        var original = guest.Machine.Memory.Read<byte>(target);
        guest.Machine.Memory.Write(target, (byte)(original ^ 0x5A));
        guest.Machine.Resume();

        var verify = await guest.Cmd("verify");
        Assert.False(verify.GetProperty("passed").GetBoolean());
        Assert.Equal(1UL, verify.GetProperty("failures").GetUInt64());
        var failure = verify.GetProperty("first_failures")[0];
        Assert.Equal(word, failure.GetProperty("addr").GetUInt64());
        Assert.Equal(FillPattern.Word(word, generation), failure.GetProperty("expected").GetUInt64());
        Assert.NotEqual(failure.GetProperty("expected").GetUInt64(), failure.GetProperty("found").GetUInt64());
    }

    [KvmFact]
    public async Task Two_vcpus_both_run_guest_code()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 256, cpus: 2);
        Assert.Equal(2, guest.Ready.GetProperty("cpus").GetInt32());
        await guest.Cmd("dirty 64 16");
        await Task.Delay(500);
        await guest.Cmd("stop");
        var stats = await guest.Cmd("stats");
        var perCpu = stats.GetProperty("cpus").EnumerateArray().ToArray();
        Assert.Equal(2, perCpu.Length);
        Assert.All(perCpu, cpu => Assert.True(cpu.GetProperty("pages_dirtied").GetUInt64() > 0, $"vCPU {cpu.GetProperty("id")} did no work: {stats}"));
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task Poweroff_ends_the_machine_as_a_guest_shutdown()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 64);
        guest.Console.SendLine("poweroff");
        var exit = await guest.Machine.Exited.WaitAsync(BootedGuest.Timeout);
        Assert.Equal(ShutdownCause.GuestShutdown, exit.Cause);
    }
}

/// <summary>The fill pattern of docs/guest-abi.md, recomputed on the host.</summary>
internal static class FillPattern
{
    public static ulong Word(ulong address, ulong generation) =>
        unchecked(address * 0x9E3779B97F4A7C15UL + generation * 0xC2B2AE3D27D4EB4FUL);
}
