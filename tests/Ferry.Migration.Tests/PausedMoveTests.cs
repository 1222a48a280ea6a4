using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Stream;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// A paused guest moved to a fresh machine through the stream format alone: RAM records, the balloon bitmap, and
/// vCPU and device STATE records, decoded and validated on the other side.
/// </summary>
public sealed class PausedMoveTests
{
    /// <summary>Migrates the paused source into a fresh machine over loopback TCP; the destination then runs.</summary>
    private static (GuestMachine Target, GuestConsole Console, MigrationStats Stats) Move(GuestMachine source)
    {
        var console = new GuestConsole();
        var (target, stats, report) = LoopbackMigration.Run(source, console, capabilities: new MigrationCapabilities { Verify = true });
        Assert.True(report.VerifiedChunks > 0);
        // Nothing changes while paused: pass 1, then a final pass with nothing left to send, then the state.
        Assert.Equal(2, stats.Passes.Count);
        Assert.Equal(0, stats.Passes[^1].NormalPages);
        return (target, console, stats);
    }

    [KvmFact]
    public async Task A_paused_guest_moved_through_the_stream_carries_on()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2, balloon: false);
        await source.Cmd("fill 16");
        await source.Cmd("dirty 50 8");
        await Task.Delay(200);
        source.Machine.Pause();
        var (target, console, counters) = Move(source.Machine);
        using (target)
        {
            // Only what the guest touched travelled: far less than its 128 MiB.
            Assert.InRange(counters.NormalPages, 16L * 256, 40L * 256);
            var stop = await console.CommandAsync("stop", BootedGuest.Timeout);
            Assert.True(stop.GetProperty("ok").GetBoolean(), stop.ToString());
            var verify = await console.CommandAsync("verify", BootedGuest.Timeout);
            Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
            Assert.True(verify.GetProperty("pages_checked").GetUInt64() >= 16 * 256 + 8 * 256);
        }
    }

    [KvmFact]
    public async Task A_guest_with_an_inflated_balloon_moves_with_its_device_and_can_deflate_afterwards()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 256, commandLine: "report_delay_ms=600000");
        var balloon = source.Machine.Balloon!;
        while (!balloon.DriverReady)
            await Task.Delay(10);
        await source.Cmd("fill 32");
        balloon.SetTargetPages(64 * 256);
        while (balloon.ActualPages != 64 * 256)
            await Task.Delay(10);
        source.Machine.Pause();
        var (target, console, counters) = Move(source.Machine);
        using (target)
        {
            // Inflated pages are memfd holes the pass never reads; they are counted as ballooned and arrive as the
            // balloon bitmap instead. Only the filled 32 MiB and bookkeeping travel.
            Assert.Equal(64L * 256, counters.BalloonedPages);
            Assert.InRange(counters.NormalPages, 32L * 256, 40L * 256);
            var targetBalloon = target.Balloon!;
            Assert.Equal(64u * 256, targetBalloon.ActualPages);
            Assert.Equal(64UL * 256, target.Memory.Blocks.Aggregate(0UL, (s, b) => s + targetBalloon.BalloonBitmap(b).Count()));
            Assert.True((await console.CommandAsync("verify", BootedGuest.Timeout)).GetProperty("passed").GetBoolean());
            // The moved driver and device still talk: deflate through the restored queues.
            targetBalloon.SetTargetPages(0);
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (targetBalloon.ActualPages != 0 && DateTime.UtcNow < deadline)
                await Task.Delay(10);
            Assert.Equal(0u, targetBalloon.ActualPages);
            Assert.Equal(0UL, target.Memory.Blocks.Aggregate(0UL, (s, b) => s + targetBalloon.BalloonBitmap(b).Count()));
            var stats = await targetBalloon.RequestStatsAsync(TimeSpan.FromSeconds(10));
            Assert.True(stats.ContainsKey(4));
        }
    }

    [Fact]
    public void Damaged_vcpu_state_is_refused_with_a_reason()
    {
        var state = new VcpuState { Index = 1, Xsave = new byte[4096], Msrs = [new Ferry.Interop.Kvm.KvmMsrEntry { Index = 0x10, Data = 5 }] };
        var bytes = VcpuStateCodec.Encode(state);
        var back = VcpuStateCodec.Decode(bytes);
        Assert.Equal(1, back.Index);
        Assert.Equal(5UL, back.Msrs[0].Data);
        for (var length = 0; length < bytes.Length; length++)
            Assert.Throws<InvalidDataException>(() => VcpuStateCodec.Decode(bytes.AsSpan(0, length)));
        var huge = (byte[])bytes.Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(huge.AsSpan(bytes.Length - 4 - 16 - 4096 - 4), 0x7FFF_FFFF);
        Assert.Contains("XSAVE area", Assert.Throws<InvalidDataException>(() => VcpuStateCodec.Decode(huge)).Message, StringComparison.Ordinal);
    }
}
