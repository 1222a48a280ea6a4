using System.Diagnostics;
using Ferry.Kvm;
using Ferry.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Ferry.Machine.Tests;

/// <summary>
/// vCPU throttling (QEMU's cpu_throttle, auto-converge). Progress is the guest's own per-vCPU dirty counter: with
/// an unreachable rate the dirtier is CPU-bound, so its page count per second is the vCPU's share of the CPU.
/// </summary>
public sealed class ThrottleTests(ITestOutputHelper output)
{
    // Far above what a vCPU can write: the dirtier never waits on its pacer, so throttling shows in its rate.
    private const string CpuBoundDirty = "dirty 1000000 8";
    private const int WorkerCpu = 1; // vCPU 0 also runs the shell; vCPU 1 only dirties

    [KvmFact]
    public async Task Throttling_at_80_percent_cuts_a_cpu_bound_vcpu_to_well_below_its_unthrottled_rate()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        var runner = guest.Machine.Runners[WorkerCpu];
        await guest.Cmd(CpuBoundDirty);
        await Task.Delay(200);

        // Unthrottled and throttled windows alternate, so a change in host load (other tests, other VMs) weighs
        // on both sides alike.
        double unthrottledPages = 0, throttledPages = 0;
        var throttledWall = TimeSpan.Zero;
        var asleep = TimeSpan.Zero;
        for (var round = 0; round < 3; round++)
        {
            unthrottledPages += await DirtyRate(guest, TimeSpan.FromMilliseconds(600));
            guest.Machine.SetThrottle(80);
            Assert.Equal(80, guest.Machine.ThrottlePercent);
            await Task.Delay(100);
            var asleepBefore = Interlocked.Read(ref runner.ThrottledTicks);
            var wall = Stopwatch.StartNew();
            throttledPages += await DirtyRate(guest, TimeSpan.FromMilliseconds(600));
            asleep += TimeSpan.FromTicks(Interlocked.Read(ref runner.ThrottledTicks) - asleepBefore);
            throttledWall += wall.Elapsed;
            guest.Machine.SetThrottle(0);
        }
        var unthrottled = unthrottledPages / 3;
        var throttled = throttledPages / 3;

        output.WriteLine($"unthrottled {unthrottled:F0} pages/s, at 80% {throttled:F0} pages/s; asleep {asleep.TotalMilliseconds:F0} of {throttledWall.TotalMilliseconds:F0} ms");
        Assert.True(unthrottled > 0, "the dirtier made no progress unthrottled");
        Assert.True(throttled < unthrottled * 0.5, $"throttled at 80% the vCPU dirtied {throttled:F0} pages/s, unthrottled {unthrottled:F0}");
        // At 80% a vCPU sleeps 40 ms of every 50; allow for timer slack.
        Assert.True(asleep >= throttledWall * 0.6, $"vCPU {WorkerCpu} slept {asleep.TotalMilliseconds:F0} ms of {throttledWall.TotalMilliseconds:F0} ms");
        guest.Machine.SetThrottle(80);

        // Still a working guest: the workload stops and verifies while throttled, and the machine stops cleanly.
        await guest.Cmd("stop");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
        guest.Machine.Stop(ShutdownCause.HostQmpQuit, "test done");
        Assert.Equal(ShutdownCause.HostQmpQuit, (await guest.Machine.Exited.WaitAsync(TimeSpan.FromSeconds(5))).Cause);
    }

    [KvmFact]
    public async Task A_machine_throttled_at_99_percent_pauses_within_a_second_resumes_throttled_and_unthrottles_to_full_speed()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        var machine = guest.Machine;
        var runner = machine.Runners[WorkerCpu];
        await guest.Cmd(CpuBoundDirty);
        await Task.Delay(200);
        var unthrottled = await DirtyRate(guest, TimeSpan.FromSeconds(1));

        machine.SetThrottle(99);
        // Every vCPU is now in a 990 ms sleep; the pause must cut it short rather than wait for it.
        await Task.Delay(300);
        for (var round = 0; round < 3; round++)
        {
            var pause = Stopwatch.StartNew();
            machine.Pause();
            output.WriteLine($"pause {round} took {pause.Elapsed.TotalMilliseconds:F1} ms");
            Assert.True(pause.Elapsed < TimeSpan.FromSeconds(1), $"pause took {pause.Elapsed.TotalMilliseconds:F0} ms while throttled at 99%");
            Assert.All(machine.Runners, r => Assert.Equal(VcpuRunner.RunnerState.Paused, r.State));
            Assert.Equal(99, machine.ThrottlePercent);
            await Task.Delay(100);
            machine.Resume();
            Assert.All(machine.Runners, r => Assert.Equal(VcpuRunner.RunnerState.Running, r.State));
            await Task.Delay(150 * round);
        }

        // Throttling carries on after resume: the vCPU spends nearly all its time asleep. A sleep is counted when
        // it ends, in 990 ms pieces, so the window is long and the bar is at least two of them in 3 s.
        var asleepBefore = Interlocked.Read(ref runner.ThrottledTicks);
        var wall = Stopwatch.StartNew();
        await Task.Delay(TimeSpan.FromSeconds(3));
        var asleep = TimeSpan.FromTicks(Interlocked.Read(ref runner.ThrottledTicks) - asleepBefore);
        var window = wall.Elapsed;
        Assert.True(asleep >= TimeSpan.FromSeconds(1.9), $"after resume vCPU {WorkerCpu} slept {asleep.TotalMilliseconds:F0} ms of {window.TotalMilliseconds:F0} ms");

        // Switching off ends the sleeps under way: no waiting out the rest of a 990 ms slice.
        var unthrottle = Stopwatch.StartNew();
        machine.SetThrottle(0);
        Assert.True(unthrottle.Elapsed < TimeSpan.FromMilliseconds(500), $"SetThrottle(0) took {unthrottle.Elapsed.TotalMilliseconds:F0} ms");
        Assert.Equal(0, machine.ThrottlePercent);
        // A cut-short sleep is counted when its thread wakes, which may be just after SetThrottle returns.
        await Task.Delay(200);
        var asleepAtOff = Interlocked.Read(ref runner.ThrottledTicks);
        var restored = await DirtyRate(guest, TimeSpan.FromSeconds(1));
        output.WriteLine($"unthrottled {unthrottled:F0} pages/s, after SetThrottle(0) {restored:F0} pages/s; at 99% asleep {asleep.TotalMilliseconds:F0} of {window.TotalMilliseconds:F0} ms");
        Assert.Equal(asleepAtOff, Interlocked.Read(ref runner.ThrottledTicks));
        // No sleep since is the exact check; the rate is a sanity check. A 99% throttle would leave a few percent,
        // while host load (other tests) moves single windows by 2-3x, hence the low bar.
        Assert.True(restored > unthrottled * 0.25, $"after SetThrottle(0) the vCPU dirtied {restored:F0} pages/s, before throttling {unthrottled:F0}");

        await guest.Cmd("stop");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public void Throttle_percentages_outside_0_to_99_are_refused_naming_the_value()
    {
        using var machine = GuestMachine.Create(new MachineConfig { MemoryBytes = 64UL << 20, GuestImagePath = GuestImageLocator.Locate() }, new GuestConsole());
        foreach (var percent in new[] { 100, -1 })
        {
            var e = Assert.Throws<ArgumentOutOfRangeException>(() => machine.SetThrottle(percent));
            Assert.Contains(percent.ToString(System.Globalization.CultureInfo.InvariantCulture), e.Message, StringComparison.Ordinal);
            Assert.Equal("percent", e.ParamName);
            Assert.Equal(0, machine.ThrottlePercent);
        }
    }

    /// <summary>Pages per second vCPU <see cref="WorkerCpu"/> dirtied over about <paramref name="interval"/>.</summary>
    private static async Task<double> DirtyRate(BootedGuest guest, TimeSpan interval)
    {
        var before = await PagesDirtied(guest);
        var elapsed = Stopwatch.StartNew();
        await Task.Delay(interval);
        var after = await PagesDirtied(guest);
        return (after - before) / elapsed.Elapsed.TotalSeconds;
    }

    private static async Task<ulong> PagesDirtied(BootedGuest guest)
    {
        var stats = await guest.Cmd("stats");
        foreach (var cpu in stats.GetProperty("cpus").EnumerateArray())
        {
            if (cpu.GetProperty("id").GetInt32() == WorkerCpu)
                return cpu.GetProperty("pages_dirtied").GetUInt64();
        }
        Assert.Fail($"stats has no vCPU {WorkerCpu}: {stats}");
        return 0;
    }
}
