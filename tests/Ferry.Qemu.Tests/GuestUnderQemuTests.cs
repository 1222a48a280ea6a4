using Xunit;

namespace Ferry.Qemu.Tests;

/// <summary>
/// Ferry's guest under QEMU's microvm (PVH boot) with QEMU's own virtio-balloon: an independent device for the
/// guest's driver, and QEMU's migration as the reference.
/// </summary>
public sealed class GuestUnderQemuTests
{
    [QemuFact]
    public async Task The_same_guest_image_boots_under_QEMU_and_powers_it_off()
    {
        using var guest = QemuGuest.Start(new QemuOptions { MemoryMib = 256 });
        var ready = await guest.WaitReadyAsync();
        // RAM comes from QEMU's PVH memory map, which keeps a little for itself.
        Assert.InRange(ready.GetProperty("ram_bytes").GetUInt64(), 248UL << 20, 256UL << 20);
        Assert.Equal(1, ready.GetProperty("cpus").GetInt32());
        await guest.Cmd("fill 64");
        Assert.True((await guest.Cmd("verify")).GetProperty("passed").GetBoolean());
        var balloon = await guest.Cmd("balloon");
        Assert.True(balloon.GetProperty("present").GetBoolean(), balloon.ToString());
        guest.Console.SendLine("poweroff");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (!guest.HasExited && DateTime.UtcNow < deadline)
            await Task.Delay(20);
        Assert.True(guest.HasExited);
        Assert.Equal(1, guest.ExitCode); // isa-debug-exit: (0 << 1) | 1
    }

    [QemuFact]
    public async Task Fill_free_balloon_and_a_hinted_migration_between_two_QEMUs()
    {
        const ulong memoryMib = 1024;
        var options = new QemuOptions { MemoryMib = memoryMib, FreePageHint = true };
        using var source = QemuGuest.Start(options);
        await source.WaitReadyAsync();

        // Inflate to 10% of RAM and back, through QEMU's device.
        await source.BalloonTo(memoryMib * 1024 * 1024 / 10);
        var inflated = await source.Cmd("balloon");
        Assert.True(inflated.GetProperty("actual").GetUInt64() >= memoryMib * 256 * 85 / 100, inflated.ToString());
        await source.BalloonTo(memoryMib * 1024 * 1024);
        Assert.Equal(0UL, (await source.Cmd("balloon")).GetProperty("actual").GetUInt64());

        // 600 MiB written then freed (non-zero pages the guest no longer needs), 200 MiB kept.
        await source.Cmd("fill 600");
        await source.Cmd("free");
        await source.Cmd("fill 200");

        var (destination, result) = await QemuMigration.MigrateAsync(source, options);
        using (destination)
        {
            var verify = await destination.Cmd("verify");
            Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
            Assert.Equal(200UL * 256, verify.GetProperty("pages_checked").GetUInt64());
            // Without hinting the 600 MiB of freed, non-zero pages would travel as normal pages. QEMU sent the
            // 200 MiB the guest holds and some bookkeeping, and skipped the hinted ones.
            Assert.True(result.NormalBytes < 300UL << 20, $"QEMU sent {result.NormalBytes >> 20} MiB of normal pages: {result}");
            Assert.True(result.NormalBytes >= 200UL << 20, $"QEMU sent only {result.NormalBytes >> 20} MiB: {result}");
        }
    }
}
