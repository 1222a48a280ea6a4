using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Tests.Synthetic;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>Faults on the host side of a snapshot save. No KVM needed (a synthetic running guest).</summary>
public sealed class SnapshotHostFaultTests
{
    private const ulong MiB = 1UL << 20;

    [SmallFilesystemFact]
    public void A_save_into_a_full_filesystem_fails_cleanly_the_guest_runs_on_and_the_older_snapshot_is_untouched()
    {
        using var filesystem = SmallFilesystem.Mount(4);
        var path = Path.Combine(filesystem.Path, "vm.snap");
        byte[] older = [.. "an older snapshot"u8];
        File.WriteAllBytes(path, older);

        using var vm = new SyntheticVm(32 * MiB);
        vm.Fill(0, 0, 4096, 1); // 16 MiB of data into a 4 MiB filesystem
        vm.WorkingSet = (0, 64);
        vm.PagesPerSecond = 1000;
        vm.Start();
        using var save = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2 }, new MigrationCapabilities());

        var error = Assert.Throws<MigrationException>(() => MachineSnapshots.Save(save, path));

        Assert.Contains("No space left on device", error.Message, StringComparison.OrdinalIgnoreCase);
        Assert.False(vm.IsPaused, "the guest was left paused");
        var generation = Interlocked.Read(ref vm.Generation);
        Thread.Sleep(100);
        Assert.True(Interlocked.Read(ref vm.Generation) > generation, "the guest stopped running");
        Assert.Equal(older, File.ReadAllBytes(path));
        Assert.False(File.Exists(MachineSnapshots.PartialPath(path)), "a partial file was left behind");
        Assert.Equal([path], Directory.GetFiles(filesystem.Path));
    }
}
