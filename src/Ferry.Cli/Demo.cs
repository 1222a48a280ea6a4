using System.Diagnostics;
using System.Text.Json;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Machines;

namespace Ferry.Cli;

/// <summary>
/// `ferry demo`: boots a guest, runs a memory workload (fill, verify, a dirtying loop with a pause in the middle,
/// the KVM dirty log), live-migrates it while it keeps dirtying memory to a second machine over loopback TCP,
/// verifies its memory there, prints what happened and powers the guest off.
/// </summary>
internal static class Demo
{
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    public static System.CommandLine.Command Build()
    {
        var machine = new RunCommand.MachineOptions("1G", 2);
        var command = new System.CommandLine.Command("demo", "boot a guest, run a memory workload in it, live-migrate it over loopback TCP, print what happened and exit");
        machine.AddTo(command);
        command.SetGuardedAction(parse =>
        {
            var config = machine.Parse(parse);
            config.Validate(MachineConfig.HostMemoryBytes());
            return RunAsync(config).GetAwaiter().GetResult() == 0 ? ExitCode.Ok : ExitCode.Failure;
        });
        return command;
    }

    private static async Task<int> RunAsync(MachineConfig config)
    {
        var console = new GuestConsole();
        var sw = Stopwatch.StartNew();
        using var machine = GuestMachine.Create(config, console, Program.Loggers);
        machine.Start();
        var ready = await WaitReady(console, machine).ConfigureAwait(false);
        Console.WriteLine($"booted: {config.Cpus} vCPU(s), {MachineConfig.FormatSize(config.MemoryBytes)} RAM, guest shell ready {sw.ElapsedMilliseconds} ms after start");
        Console.WriteLine($"  guest manages {Mib(ready, "usable_bytes")} MiB; {Mib(ready, "reserved_bytes")} MiB reserved (VMM structures, guest image and stacks, allocator metadata, virtio rings)");

        var fillMib = (ulong)(config.MemoryBytes / GuestLayout.MiB / 2);
        machine.Vm.SetDirtyLogging(true);
        var bitmaps = machine.Memory.Blocks.Select(b => new PageSet(b.PageCount)).ToArray();
        SyncAll(machine, bitmaps);
        foreach (var b in bitmaps)
            b.Clear();

        var fill = await Cmd(console, $"fill {fillMib}").ConfigureAwait(false);
        var fillNs = fill.GetProperty("ns").GetDouble();
        Console.WriteLine($"fill {fillMib} MiB: {fill.GetProperty("pages").GetUInt64()} pages of generation {fill.GetProperty("generation").GetUInt64()} in {fillNs / 1e6:0.0} ms ({fillMib / 1024.0 / (fillNs / 1e9):0.00} GiB/s)");
        SyncAll(machine, bitmaps);
        var dirtyPages = bitmaps.Sum(b => (long)b.Count());
        Console.WriteLine($"  KVM dirty log after the fill: {dirtyPages} pages dirty ({dirtyPages * 4 / 1024} MiB): the filled pages plus the guest's bookkeeping");

        var verify = await Cmd(console, "verify").ConfigureAwait(false);
        Console.WriteLine($"verify: {verify.GetProperty("pages_checked").GetUInt64()} pages checked, {verify.GetProperty("failures").GetUInt64()} failures");

        await Cmd(console, "dirty 200 64").ConfigureAwait(false);
        await Task.Delay(500).ConfigureAwait(false);
        var pauseWatch = Stopwatch.StartNew();
        machine.Pause();
        var pauseMs = pauseWatch.Elapsed.TotalMilliseconds;
        var before = await Task.Run(() => machine.Vcpus[0].GetRegs().Rip).ConfigureAwait(false);
        await Task.Delay(300).ConfigureAwait(false);
        machine.Resume();
        await Task.Delay(500).ConfigureAwait(false);
        var stop = await Cmd(console, "stop").ConfigureAwait(false);
        Console.WriteLine($"dirty 200 MiB/s over a 64 MiB working set for ~1 s, paused for 300 ms in the middle (pause took {pauseMs:0.0} ms, RIP 0x{before:X}): {stop.GetProperty("pages_dirtied").GetUInt64()} pages rewritten");
        verify = await Cmd(console, "verify").ConfigureAwait(false);
        Console.WriteLine($"verify after the pause: {verify.GetProperty("pages_checked").GetUInt64()} pages checked, {verify.GetProperty("failures").GetUInt64()} failures");

        // Free half of the filled memory (free page hinting should keep it off the wire), keep a working set
        // dirtying, and move the running guest to a second machine over loopback TCP, on default settings.
        await Cmd(console, $"free {fillMib / 2}").ConfigureAwait(false);
        await Cmd(console, "dirty 100 64").ConfigureAwait(false);
        var allocated = machine.Memory.Blocks.Sum(b => (double)b.AllocatedBytes());
        var used = await Cmd(console, "stats").ConfigureAwait(false);
        Console.WriteLine($"before migrating: guest uses {Mib(used, "used_bytes")} MiB (dirty 100 MiB/s over 64 MiB running); host has {allocated / GuestLayout.MiB:0.0} MiB allocated for its RAM");
        var destinationConsole = new GuestConsole();
        var (destination, migration, report) = await Task.Run(() => LoopbackMigration.Run(machine, destinationConsole)).ConfigureAwait(false);
        using (destination)
        {
            Console.WriteLine($"live migration over loopback TCP ({migration.Channels} channels, {migration.Passes.Count} passes): {migration.TotalTimeMs:0} ms total, {migration.DowntimeMs:0.0} ms downtime, {migration.TransferredBytes / (double)GuestLayout.MiB:0.0} MiB sent");
            Console.WriteLine($"  pages sent {migration.NormalPages}, zero {migration.ZeroPages}, skipped: never touched {migration.UntouchedPages}, hinted free {migration.HintedPages}, ballooned {migration.BalloonedPages}");
            Console.WriteLine($"  destination loaded {report.DataPages} pages from {report.Channels} channels; free page hint: {Ferry.Control.MigrationQmpText.FreePageHint(migration)}");
            var stopped = await Cmd(destinationConsole, "stop").ConfigureAwait(false);
            verify = await Cmd(destinationConsole, "verify").ConfigureAwait(false);
            Console.WriteLine($"on the destination: dirty had rewritten {stopped.GetProperty("pages_dirtied").GetUInt64()} pages; verify: {verify.GetProperty("pages_checked").GetUInt64()} pages checked, {verify.GetProperty("failures").GetUInt64()} failures");
            var destinationAllocated = destination.Memory.Blocks.Sum(b => (double)b.AllocatedBytes());
            Console.WriteLine($"host memory allocated for the destination's RAM: {destinationAllocated / GuestLayout.MiB:0.0} MiB of {MachineConfig.FormatSize(config.MemoryBytes)}");
            destinationConsole.SendLine("poweroff");
            var exit = await destination.Exited.WaitAsync(Timeout).ConfigureAwait(false);
            Console.WriteLine($"exit: {exit.Message}");
            var passed = verify.GetProperty("passed").GetBoolean() && exit.Cause == ShutdownCause.GuestShutdown;
            return passed ? 0 : 1;
        }
    }

    private static async Task<JsonElement> WaitReady(GuestConsole console, GuestMachine machine)
    {
        var ready = console.WaitForEventAsync("ready", Timeout);
        var finished = await Task.WhenAny(ready, machine.Exited).ConfigureAwait(false);
        if (finished != ready)
            throw new InvalidOperationException($"guest stopped before its shell was ready: {machine.Exited.Result.Message}");
        return await ready.ConfigureAwait(false);
    }

    private static async Task<JsonElement> Cmd(GuestConsole console, string command)
    {
        var reply = await console.CommandAsync(command, Timeout).ConfigureAwait(false);
        if (!reply.GetProperty("ok").GetBoolean())
            throw new InvalidOperationException($"guest command '{command}' failed: {reply}");
        return reply;
    }

    private static void SyncAll(GuestMachine machine, PageSet[] bitmaps)
    {
        for (var i = 0; i < bitmaps.Length; i++)
            machine.Vm.SyncDirtyLog(machine.Memory.Blocks[i], bitmaps[i]);
    }

    private static ulong Mib(JsonElement json, string property) => json.GetProperty(property).GetUInt64() / GuestLayout.MiB;
}
