using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Machines;
using Ferry.Migration.Snapshot;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>Real guests saved to snapshot files while they run, and restored into fresh machines.</summary>
public sealed class SnapshotMachineTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-snap-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static BootedGuest Restore(BootedGuest like, string path, RestoreMode mode = RestoreMode.Eager) => Restore(like, path, mode, out _);

    private static BootedGuest Restore(BootedGuest like, string path, RestoreMode mode, out RestoreReport report)
    {
        var console = new GuestConsole();
        var machine = GuestMachine.Create(like.Machine.Config, console);
        machine.Start(paused: true);
        report = MachineSnapshots.Restore(machine, path, mode: mode);
        Assert.Equal(mode, report.Mode);
        Assert.Equal(mode == RestoreMode.LazyMap, machine.Memory.Blocks.All(b => b.IsFileMapped));
        Assert.Equal(mode == RestoreMode.Lazy, machine.Memory.Blocks.All(b => b.Pager is not null));
        return BootedGuest.Adopt(machine, console);
    }

    [KvmFact]
    public async Task A_guest_saved_while_it_dirties_memory_restores_and_carries_on_twice()
    {
        var guest = await BootedGuest.StartAsync(memoryMib: 512, cpus: 2, commandLine: "report_delay_ms=600000");
        try
        {
            await guest.Cmd("fill 96");
            await guest.Cmd("dirty 50 16");
            for (var round = 0; round < 2; round++)
            {
                var path = Path.Combine(_directory, $"round{round}.snap");
                var stats = MachineSnapshots.Save(guest.Machine, path);
                Assert.Equal(MachineStatus.Running, guest.Machine.Status); // a snapshot, not a move: the guest runs on
                Assert.False(File.Exists(MachineSnapshots.PartialPath(path)));
                var restored = Restore(guest, path);
                guest.Dispose();
                guest = restored;
                var running = await guest.Cmd("stats");
                Assert.True(running.GetProperty("dirty_running").GetBoolean());
                var verify = await guest.Cmd("verify");
                Assert.True(verify.GetProperty("passed").GetBoolean(), $"round {round}: {verify}");
                Assert.True(stats.Passes.Count >= 2);
            }
        }
        finally
        {
            guest.Dispose();
        }
    }

    [KvmFact]
    public async Task A_guest_restored_lazily_carries_on_and_is_saved_again_from_its_file_mapped_memory()
    {
        var guest = await BootedGuest.StartAsync(memoryMib: 512, cpus: 2, commandLine: "report_delay_ms=600000");
        try
        {
            await guest.Cmd("fill 96");
            await guest.Cmd("dirty 50 16");
            // Round 0 saves a memfd guest; rounds 1 and 2 save a guest whose memory is still mostly the previous
            // file (the engine must find its data in the file's slots and the pages written since). Round 1 saves
            // over the very file the guest is mapped from: the new file is renamed over it, the mapped one lives on.
            for (var round = 0; round < 3; round++)
            {
                var path = Path.Combine(_directory, round < 2 ? "lazy.snap" : "eager.snap");
                var stats = MachineSnapshots.Save(guest.Machine, path);
                Assert.True(stats.Passes.Count >= 2);
                long present;
                using (var file = SnapshotFile.Open(path))
                    present = file.Inspect().PresentBytes;
                Assert.True(present >= 96L << 20, $"round {round}: only {present} bytes present in the file");
                // The last round restores eagerly from a file written out of file-mapped memory.
                var restored = Restore(guest, path, round < 2 ? RestoreMode.LazyMap : RestoreMode.Eager);
                guest.Dispose();
                guest = restored;
                var running = await guest.Cmd("stats");
                Assert.True(running.GetProperty("dirty_running").GetBoolean());
                var verify = await guest.Cmd("verify");
                Assert.True(verify.GetProperty("passed").GetBoolean(), $"round {round}: {verify}");
            }
        }
        finally
        {
            guest.Dispose();
        }
    }

    [KvmTheory]
    [InlineData(RestoreMode.LazyMap)]
    [InlineData(RestoreMode.Lazy)]
    public async Task Pages_inflated_into_the_balloon_after_a_lazy_restore_read_zero_not_the_files_old_contents(RestoreMode mode)
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 512, commandLine: "report_delay_ms=600000");
        while (!guest.Machine.Balloon!.DriverReady)
            await Task.Delay(10);
        await guest.Cmd("fill 320");
        await guest.Cmd("free");
        guest.Machine.Pause(); // a paused save cannot hint: the freed pages go into the file with their old data
        var path = Path.Combine(_directory, "inflate.snap");
        MachineSnapshots.Save(guest.Machine, path);
        using var restored = Restore(guest, path, mode);
        var balloon = restored.Machine.Balloon!;
        var target = 384u * 256; // 384 of 512 MiB: it must take most of the freed, once filled pages
        balloon.SetTargetPages(target);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (balloon.ActualPages != target && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        Assert.Equal(target, balloon.ActualPages);

        using var file = SnapshotFile.Open(path);
        long inflatedOverData = 0, nonZero = 0;
        var page = new byte[4096];
        foreach (var block in restored.Machine.Memory.Blocks)
        {
            var saved = file.Blocks.Single(b => b.Name == block.Name);
            foreach (var p in balloon.BalloonBitmap(block).Pages())
            {
                if (!saved.IsPresent(p))
                    continue;
                inflatedOverData++;
                restored.Machine.Memory.Read(block.GuestPhysicalAddress + p * 4096, page);
                if (page.AsSpan().ContainsAnyExcept((byte)0))
                    nonZero++;
            }
        }
        Assert.True(inflatedOverData > 32 * 256, $"only {inflatedOverData} inflated pages had data in the file: the test proves nothing");
        Assert.Equal(0, nonZero);
        Assert.True((await restored.Cmd("verify")).GetProperty("passed").GetBoolean());
        balloon.SetTargetPages(0);
        deadline = DateTime.UtcNow.AddSeconds(60);
        while (balloon.ActualPages != 0 && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        Assert.Equal(0u, balloon.ActualPages);
        await restored.Cmd("fill 300");
        Assert.True((await restored.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task The_file_holds_only_the_pages_the_guest_uses()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 1024, commandLine: "report_delay_ms=600000");
        await guest.Cmd("fill 200");
        var path = Path.Combine(_directory, "used.snap");
        MachineSnapshots.Save(guest.Machine, path);
        using var file = SnapshotFile.Open(path);
        var inspection = file.Inspect();
        var present = inspection.PresentBytes;
        // 200 MiB filled, plus the guest's own bookkeeping pages; not the other 800 MiB.
        Assert.InRange(present, 200L << 20, 230L << 20);
        Assert.Equal(1024L << 20, (long)inspection.Blocks.Sum(b => (decimal)b.Size));
        Assert.InRange(inspection.AllocatedBytes, present, present + present / 20 + (1 << 20));
    }

    [KvmFact]
    public async Task A_paused_guest_is_saved_in_one_pass_and_stays_paused()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 256);
        await guest.Cmd("fill 32");
        guest.Machine.Pause();
        var path = Path.Combine(_directory, "paused.snap");
        var stats = MachineSnapshots.Save(guest.Machine, path);
        Assert.Equal(MachineStatus.Paused, guest.Machine.Status);
        Assert.Equal(2, stats.Passes.Count);
        Assert.Equal(0, stats.Passes[^1].NormalPages);
        using var restored = Restore(guest, path);
        Assert.True((await restored.Cmd("verify")).GetProperty("passed").GetBoolean());
    }

    [KvmFact]
    public async Task A_ballooned_guest_keeps_its_balloon_through_save_and_restore()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 512, commandLine: "report_delay_ms=600000");
        var balloon = guest.Machine.Balloon!;
        while (!balloon.DriverReady)
            await Task.Delay(10);
        await guest.Cmd("fill 64");
        balloon.SetTargetPages(256 * 256);
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (balloon.ActualPages != 256 * 256 && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        var path = Path.Combine(_directory, "balloon.snap");
        var stats = MachineSnapshots.Save(guest.Machine, path);
        Assert.Equal(256L * 256, stats.BalloonedPages);
        using (var file = SnapshotFile.Open(path))
            Assert.Equal(256UL * 256, file.Blocks.Aggregate(0UL, (s, b) => s + b.BalloonedPages));
        using var restored = Restore(guest, path);
        var restoredBalloon = restored.Machine.Balloon!;
        Assert.Equal(256u * 256, restoredBalloon.ActualPages);
        Assert.Equal(256UL * 256, restored.Machine.Memory.Blocks.Aggregate(0UL, (s, b) => s + restoredBalloon.BalloonBitmap(b).Count()));
        Assert.True((await restored.Cmd("verify")).GetProperty("passed").GetBoolean());
        restoredBalloon.SetTargetPages(0);
        deadline = DateTime.UtcNow.AddSeconds(60);
        while (restoredBalloon.ActualPages != 0 && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        Assert.Equal(0u, restoredBalloon.ActualPages);
    }

    /// <summary>Flips one bit inside the last present page of the first block holding data; returns which page.</summary>
    private static (string Block, ulong Page) FlipBitInLastPresentPage(string path)
    {
        string name;
        ulong page;
        long offset;
        using (var file = SnapshotFile.Open(path))
        {
            var block = file.Blocks.First(b => b.PresentPages > 0);
            page = Enumerable.Range(0, (int)block.PageCount).Select(p => (ulong)p).Last(block.IsPresent);
            (name, offset) = (block.Name, (long)(block.PagesOffset + page * 4096) + 777);
        }
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        var b = new byte[1];
        RandomAccess.Read(handle, b, offset);
        b[0] ^= 0x04;
        RandomAccess.Write(handle, b, offset);
        return (name, page);
    }

    /// <summary>A 128 MiB guest that filled 16 MiB, saved to <paramref name="name"/> in the test directory.</summary>
    private async Task<(BootedGuest Guest, string Path)> SavedFilledGuest(string name)
    {
        var guest = await BootedGuest.StartAsync(memoryMib: 128);
        try
        {
            await guest.Cmd("fill 16");
            var path = Path.Combine(_directory, name);
            MachineSnapshots.Save(guest.Machine, path);
            return (guest, path);
        }
        catch
        {
            guest.Dispose();
            throw;
        }
    }

    [KvmFact]
    public async Task A_damaged_file_is_refused_and_nothing_runs()
    {
        var (saved, path) = await SavedFilledGuest("damaged.snap");
        using var guest = saved;
        using (var stream = File.OpenWrite(path))
            stream.SetLength(stream.Length / 2);
        using var machine = GuestMachine.Create(guest.Machine.Config, new GuestConsole());
        machine.Start(paused: true);
        Assert.Throws<SnapshotFormatException>(() => MachineSnapshots.Restore(machine, path));
        Assert.Equal(MachineStatus.Paused, machine.Status);
    }

    [KvmFact]
    public async Task A_flipped_bit_in_a_page_refuses_eager_and_mapped_restores_naming_it_and_nothing_runs()
    {
        var (saved, path) = await SavedFilledGuest("bitflip.snap");
        using var guest = saved;
        var (name, page) = FlipBitInLastPresentPage(path);
        foreach (var mode in new[] { RestoreMode.Eager, RestoreMode.LazyMap })
        {
            using var machine = GuestMachine.Create(guest.Machine.Config, new GuestConsole());
            machine.Start(paused: true);
            var e = Assert.Throws<SnapshotFormatException>(() => MachineSnapshots.Restore(machine, path, mode: mode));
            Assert.Equal(SnapshotFault.PageChecksum, e.Fault);
            Assert.Contains($"block '{name}' page {page}: page checksum mismatch", e.Message, StringComparison.Ordinal);
            Assert.Equal(MachineStatus.Paused, machine.Status);
        }
    }

    [KvmTheory]
    [InlineData(RamBackend.Memfd)]
    [InlineData(RamBackend.Anonymous)]
    public async Task A_guest_restored_lazily_through_userfaultfd_runs_verify_and_is_saved_again_while_the_fill_runs(RamBackend backend)
    {
        var guest = await BootedGuest.StartAsync(memoryMib: 1024, cpus: 2, commandLine: "report_delay_ms=600000");
        try
        {
            await guest.Cmd("fill 400");
            await guest.Cmd("dirty 50 16");
            var path = Path.Combine(_directory, "uffd.snap");
            MachineSnapshots.Save(guest.Machine, path);
            var like = guest;
            var console = new GuestConsole();
            var machine = GuestMachine.Create(like.Machine.Config with { MemoryBackend = backend }, console);
            machine.Start(paused: true);
            var report = MachineSnapshots.Restore(machine, path, mode: RestoreMode.Lazy);
            guest.Dispose();
            guest = BootedGuest.Adopt(machine, console);
            Assert.NotNull(report.Paging);
            // Saved again at once, while the background fill is still bringing the file in: complete and correct.
            var again = Path.Combine(_directory, "again.snap");
            MachineSnapshots.Save(guest.Machine, again);
            var verify = await guest.Cmd("verify");
            Assert.True(verify.GetProperty("passed").GetBoolean(), $"{verify}");
            Assert.True(report.Paging.Completion.Wait(BootedGuest.Timeout));
            var stats = report.Paging.Statistics();
            Assert.Equal(DemandPagingState.Complete, stats.State);
            // Each page read once at most (pages the guest gave back meanwhile are never read).
            Assert.InRange(stats.PagesFetched, 1, report.PagesMapped);
            Assert.Equal(stats.SourcePages, stats.PagesFetched);
            Assert.True(stats.FaultLatencyP99Us > 0);
            var reloaded = Restore(guest, again);
            guest.Dispose();
            guest = reloaded;
            Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
        }
        finally
        {
            guest.Dispose();
        }
    }

    [KvmFact]
    public async Task A_bad_page_stops_a_guest_restored_through_userfaultfd_with_a_memory_fault_naming_it()
    {
        var (saved, path) = await SavedFilledGuest("uffd-bitflip.snap");
        using var guest = saved;
        var (name, page) = FlipBitInLastPresentPage(path);
        using var machine = GuestMachine.Create(guest.Machine.Config, new GuestConsole());
        machine.Start(paused: true);
        var report = MachineSnapshots.Restore(machine, path, mode: RestoreMode.Lazy);
        // The fill reaches the page (or the guest touches it first): either way the machine stops, naming it.
        var exit = await machine.Exited.WaitAsync(BootedGuest.Timeout);
        Assert.Equal((ShutdownCause.HostError, HostFault.Memory), (exit.Cause, exit.Fault));
        Assert.Contains($"RAM block '{name}' page {page}", exit.Message, StringComparison.Ordinal);
        Assert.Contains("page checksum mismatch", exit.Message, StringComparison.Ordinal);
        Assert.Equal(DemandPagingState.Failed, report.Paging!.Statistics().State);
    }

    [KvmFact]
    public async Task A_snapshot_file_truncated_while_a_lazily_restored_guest_runs_stops_it_with_a_clear_error()
    {
        using var guest = await BootedGuest.StartAsync(memoryMib: 1024, commandLine: "report_delay_ms=600000");
        await guest.Cmd("fill 600");
        var path = Path.Combine(_directory, "shrinks.snap");
        MachineSnapshots.Save(guest.Machine, path);
        var console = new GuestConsole();
        using var machine = GuestMachine.Create(guest.Machine.Config, console);
        machine.Start(paused: true);
        MachineSnapshots.Restore(machine, path, mode: RestoreMode.Lazy);
        File.Delete(path); // unlinking is harmless: the pager holds the file open
        using (var handle = File.OpenHandle("/proc/self/fd/" + OpenFd(path), FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.SetLength(handle, RandomAccess.GetLength(handle) / 4);
        var exit = await machine.Exited.WaitAsync(BootedGuest.Timeout);
        Assert.Equal((ShutdownCause.HostError, HostFault.Memory), (exit.Cause, exit.Fault));
        Assert.Contains("truncated", exit.Message, StringComparison.Ordinal);
        Assert.Contains("RAM block '", exit.Message, StringComparison.Ordinal);
    }

    /// <summary>The descriptor number under which this process still holds the (unlinked) file at <paramref name="path"/>.</summary>
    private static string OpenFd(string path) =>
        Directory.GetFiles("/proc/self/fd").Select(f => (Fd: Path.GetFileName(f), Target: new FileInfo(f).LinkTarget))
            .First(f => f.Target == path + " (deleted)").Fd;
}
