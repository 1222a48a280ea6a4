using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.Kvm;
using Ferry.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Ferry.Machine.Tests;

/// <summary>
/// The idle hint (port 0xF5, docs/guest-abi.md): an idle guest's vCPUs sleep in the VMM instead of spinning, and
/// wake at once for console input, balloon requests and pauses.
/// </summary>
public sealed class IdleTests(ITestOutputHelper output)
{
    private static readonly TimeSpan Window = TimeSpan.FromSeconds(2);

    [KvmFact]
    public async Task An_idle_two_vcpu_guest_uses_a_small_fraction_of_a_core_per_vcpu()
    {
        var before = VcpuThreads();
        using var guest = await BootedGuest.StartAsync(memoryMib: 256, cpus: 2);
        await guest.Cmd("stats");
        // This machine's vCPU threads: the ones named vcpuN that were not there before it started.
        var threads = VcpuThreads().Where(t => !before.ContainsKey(t.Key)).ToDictionary();
        Assert.Equal(2, threads.Count);
        await Task.Delay(300); // the boot and the command are over; the balloon driver has settled

        var sleeps = Interlocked.Read(ref guest.Machine.Idle.Sleeps);
        var cpuBefore = threads.ToDictionary(t => t.Key, t => ThreadCpuTime(t.Key));
        var wall = Stopwatch.StartNew();
        await Task.Delay(Window);
        var elapsed = wall.Elapsed;
        var sleptDuring = Interlocked.Read(ref guest.Machine.Idle.Sleeps) - sleeps;

        foreach (var (tid, name) in threads)
        {
            var share = (ThreadCpuTime(tid) - cpuBefore[tid]) / elapsed;
            output.WriteLine($"{name}: {share:P1} of a core over {elapsed.TotalSeconds:F1} s");
            Assert.True(share < 0.25, $"idle {name} used {share:P1} of a core (spinning instead of sleeping at the idle port?)");
        }
        output.WriteLine($"idle sleeps: {sleptDuring}, exits: {string.Join(", ", guest.Machine.Runners.Select(r => r.ExitCount))}");
        Assert.True(sleptDuring > 0, "no vCPU slept at the idle port");

        // Still a working guest with both vCPUs: a dirty run starts (the workers are woken to acknowledge it),
        // stops and verifies.
        await guest.Cmd("dirty 50 8");
        await Task.Delay(200);
        var stopped = await guest.Cmd("stop");
        Assert.True(stopped.GetProperty("pages_dirtied").GetUInt64() > 0);
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task Console_commands_to_an_idle_guest_are_answered_at_once()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        await guest.Cmd("stats");
        var times = new List<TimeSpan>();
        for (var i = 0; i < 20; i++)
        {
            // Long enough for both vCPUs to be asleep when the command arrives.
            await Task.Delay(20 + i % 7);
            var sleeps = Interlocked.Read(ref guest.Machine.Idle.Sleeps);
            var sw = Stopwatch.StartNew();
            var reply = await guest.Console.CommandAsync(i % 2 == 0 ? "stats" : "info", TimeSpan.FromSeconds(30));
            times.Add(sw.Elapsed);
            Assert.True(reply.GetProperty("ok").GetBoolean(), reply.ToString());
            Assert.True(sleeps > 0, "the guest never slept at the idle port");
        }
        times.Sort();
        output.WriteLine($"round trip: median {times[times.Count / 2].TotalMilliseconds:F2} ms, max {times[^1].TotalMilliseconds:F2} ms");
        // Functional, not a benchmark: generous enough for a loaded host.
        Assert.True(times[times.Count / 2] < TimeSpan.FromSeconds(2), $"median round trip {times[times.Count / 2]}");
    }

    [KvmFact]
    public async Task Host_requests_and_pauses_reach_an_idle_guest()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        await guest.Cmd("stats");
        var balloon = guest.Machine.Balloon!;
        for (var i = 0; i < 3; i++)
        {
            await Task.Delay(50);
            // The stats request returns the driver's buffer (a used-ring update the guest polls for).
            var stats = await balloon.RequestStatsAsync(TimeSpan.FromSeconds(10));
            Assert.NotEmpty(stats);
        }

        // A configuration change: the guest inflates to the new target.
        await Task.Delay(50);
        balloon.SetTargetPages(1024);
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        while ((await guest.Cmd("balloon")).GetProperty("actual").GetUInt32() != 1024)
        {
            Assert.True(DateTime.UtcNow < deadline, "the guest did not inflate the balloon");
            await Task.Delay(20);
        }
        balloon.SetTargetPages(0);

        // Pausing sleeping vCPUs is bounded (the kick ends the sleep), and they carry on after resume.
        for (var i = 0; i < 5; i++)
        {
            await Task.Delay(30);
            var sw = Stopwatch.StartNew();
            guest.Machine.Pause();
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(2), $"pause took {sw.Elapsed}");
            Assert.All(guest.Machine.Runners, r => Assert.Equal(VcpuRunner.RunnerState.Paused, r.State));
            guest.Machine.Resume();
        }
        await guest.Cmd("stats");
        guest.Machine.Stop(ShutdownCause.HostQmpQuit, "test done");
        Assert.Equal(ShutdownCause.HostQmpQuit, (await guest.Machine.Exited.WaitAsync(TimeSpan.FromSeconds(5))).Cause);
    }

    [Fact]
    public void A_wake_makes_the_next_sleep_request_return_without_sleeping()
    {
        var port = new IdlePort(1);
        var request = new byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(request, 100);
        RunOnBlockedThread(() =>
        {
            port.Write(0, request);
            Assert.Equal(1, port.Sleeps);
            port.Wake(); // nobody asleep: only counted
            port.Write(0, request); // the guest has not looked since: back at once
            Assert.Equal(1, port.Sleeps);
            port.Write(0, request);
            Assert.Equal(2, port.Sleeps);
            port.Write(0, [0, 0, 0, 0]); // a guest's wake-all
            port.Write(0, request);
            Assert.Equal(2, port.Sleeps);
        });
        Assert.Equal(2, port.Events);
    }

    [Fact]
    public void A_sleep_is_capped_at_10_ms_and_allocates_nothing()
    {
        var port = new IdlePort(1);
        byte[] forever = [0xFF, 0xFF, 0xFF, 0xFF]; // 71 minutes asked for
        byte[] wakeAll = [0, 0, 0, 0];
        var sw = Stopwatch.StartNew();
        long allocated = -1;
        RunOnBlockedThread(() =>
        {
            port.Write(0, forever); // first use: signal set-up, JIT
            var before = GC.GetAllocatedBytesForCurrentThread();
            port.Write(0, forever);
            port.Write(0, wakeAll);
            port.Write(0, forever); // back at once: woken since
            port.Write(0, forever);
            allocated = GC.GetAllocatedBytesForCurrentThread() - before;
        });
        Assert.Equal(3, port.Sleeps);
        Assert.True(sw.Elapsed < TimeSpan.FromSeconds(5), $"three capped sleeps took {sw.Elapsed}");
        Assert.Equal(0, allocated); // it runs on the vCPU exit path
    }

    // The sleep waits for the kick signal, which must be blocked in the sleeping thread (as on a vCPU thread).
    private static void RunOnBlockedThread(Action body)
    {
        Exception? failure = null;
        var thread = new Thread(() =>
        {
            try
            {
                VcpuKick.BlockInCurrentThread();
                body();
            }
            catch (Exception e)
            {
                failure = e;
            }
        });
        thread.Start();
        thread.Join();
        if (failure is not null)
            throw new InvalidOperationException("the sleeping thread failed", failure);
    }

    private static Dictionary<int, string> VcpuThreads()
    {
        var threads = new Dictionary<int, string>();
        foreach (var dir in Directory.EnumerateDirectories("/proc/self/task"))
        {
            try
            {
                var name = File.ReadAllText(Path.Combine(dir, "comm")).Trim();
                if (name.StartsWith("vcpu", StringComparison.Ordinal))
                    threads[int.Parse(Path.GetFileName(dir), System.Globalization.CultureInfo.InvariantCulture)] = name;
            }
            catch (IOException)
            {
                // the thread exited meanwhile
            }
        }
        return threads;
    }

    /// <summary>utime + stime of one thread of this process (/proc/self/task/TID/stat, in clock ticks).</summary>
    private static TimeSpan ThreadCpuTime(int tid)
    {
        var stat = File.ReadAllText($"/proc/self/task/{tid}/stat");
        var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
        // After "pid (comm) ": state is field 3, utime 14 and stime 15 (1-based) -> indexes 11 and 12 here.
        var ticks = long.Parse(fields[11], System.Globalization.CultureInfo.InvariantCulture)
                    + long.Parse(fields[12], System.Globalization.CultureInfo.InvariantCulture);
        return TimeSpan.FromSeconds(ticks / 100.0); // USER_HZ is 100 on Linux
    }
}
