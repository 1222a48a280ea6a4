using System.Diagnostics;
using Ferry.Kvm;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Machine.Tests;

/// <summary>Pausing vCPUs that spin without exits, and moving vCPU state to another machine.</summary>
public sealed class PauseAndStateTests
{
    [KvmFact]
    public async Task Pause_and_resume_while_dirty_runs_and_the_workload_continues()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 256, cpus: 2);
        await guest.Cmd("dirty 100 32");
        await Task.Delay(300);
        for (var round = 0; round < 5; round++)
        {
            var sw = Stopwatch.StartNew();
            guest.Machine.Pause();
            // Bounded: vCPU 1 runs the dirty loop with no exits at all, so only the kick gets it out.
            Assert.True(sw.Elapsed < TimeSpan.FromSeconds(2), $"pause took {sw.Elapsed}");
            Assert.All(guest.Machine.Runners, r => Assert.Equal(VcpuRunner.RunnerState.Paused, r.State));
            var rip = guest.Machine.Vcpus[1].GetRegs().Rip;
            await Task.Delay(50);
            Assert.Equal(rip, guest.Machine.Vcpus[1].GetRegs().Rip);
            guest.Machine.Resume();
            await Task.Delay(100);
        }
        var before = (await guest.Cmd("stats")).GetProperty("pages_dirtied").GetUInt64();
        await Task.Delay(300);
        var after = (await guest.Cmd("stats")).GetProperty("pages_dirtied").GetUInt64();
        Assert.True(after > before, $"the workload did not continue after resume ({before} -> {after})");
        await guest.Cmd("stop");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task A_paused_guest_moved_into_a_fresh_machine_carries_on_where_it_was()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        await source.Cmd("fill 16");
        await source.Cmd("dirty 50 8");
        await Task.Delay(200);
        source.Machine.Pause();
        var states = source.Machine.CaptureVcpuStates();
        Assert.Equal(2, states.Count);
        Assert.All(states, s => Assert.Equal(3UL, s.Sregs.Cs.Selector & 3UL)); // captured at CPL3
        Assert.Contains(states[0].Msrs, m => m.Index == MsrPolicy.IA32_TSC);

        var console = new GuestConsole();
        using var target = GuestMachine.Create(source.Machine.Config, console);
        target.Start(paused: true);
        for (var i = 0; i < source.Machine.Memory.Blocks.Count; i++)
        {
            var from = source.Machine.Memory.Blocks[i];
            var to = target.Memory.Blocks[i];
            for (ulong offset = 0; offset < from.Size; offset += 1 << 20)
                from.Mapping.GetSpan(offset, 1 << 20).CopyTo(to.Mapping.GetSpan(offset, 1 << 20));
        }
        target.RestoreVcpuStates(states);
        source.Machine.Stop(ShutdownCause.HostQmpQuit, "moved");
        target.Resume();

        var stop = await console.CommandAsync("stop", BootedGuest.Timeout);
        Assert.True(stop.GetProperty("ok").GetBoolean(), stop.ToString());
        var verify = await console.CommandAsync("verify", BootedGuest.Timeout);
        Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
        Assert.True(verify.GetProperty("pages_checked").GetUInt64() >= 4096 + 2048);
    }
}

public sealed class LifecycleTests
{
    [KvmFact]
    public void A_machine_that_was_never_started_disposes_cleanly()
    {
        var machine = GuestMachine.Create(new MachineConfig { MemoryBytes = 64UL << 20, GuestImagePath = GuestImageLocator.Locate() }, new GuestConsole());
        machine.Dispose();
        Assert.Equal(MachineStatus.Shutdown, machine.Status);
    }

    [KvmFact]
    public async Task Concurrent_pause_and_resume_calls_leave_every_vcpu_in_the_state_the_machine_reports()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2);
        await guest.Cmd("dirty 50 8");
        for (var round = 0; round < 20; round++)
        {
            var calls = Enumerable.Range(0, 4).Select(i => Task.Run(() =>
            {
                if ((i + round) % 2 == 0)
                    guest.Machine.Pause();
                else
                    guest.Machine.Resume();
            })).ToArray();
            await Task.WhenAll(calls);
            var expected = guest.Machine.Status == MachineStatus.Paused ? VcpuRunner.RunnerState.Paused : VcpuRunner.RunnerState.Running;
            Assert.All(guest.Machine.Runners, r => Assert.Equal(expected, r.State));
        }
        guest.Machine.Resume();
        await guest.Cmd("stop");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
    }
}
