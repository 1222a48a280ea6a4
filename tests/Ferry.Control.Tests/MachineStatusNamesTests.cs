using System.Text.Json.Nodes;
using Ferry.Machine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>query-status and SHUTDOWN spell each machine status and shutdown cause as QEMU does.</summary>
public sealed class MachineStatusNamesTests
{
    [Theory]
    [InlineData(MachineStatus.Prelaunch, "prelaunch")]
    [InlineData(MachineStatus.Running, "running")]
    [InlineData(MachineStatus.Paused, "paused")]
    [InlineData(MachineStatus.InMigrate, "inmigrate")]
    [InlineData(MachineStatus.PostMigrate, "postmigrate")]
    [InlineData(MachineStatus.Shutdown, "shutdown")]
    public void Each_status_has_qemus_name(MachineStatus status, string qmp) => Assert.Equal(qmp, status.ToQmp());

    [Fact]
    public void Every_status_is_named() =>
        Assert.All(Enum.GetValues<MachineStatus>(), s => Assert.False(string.IsNullOrEmpty(s.ToQmp())));

    [Theory]
    [InlineData(ShutdownCause.HostError, "host-error", false)]
    [InlineData(ShutdownCause.HostQmpQuit, "host-qmp-quit", false)]
    [InlineData(ShutdownCause.HostSignal, "host-signal", false)]
    [InlineData(ShutdownCause.GuestShutdown, "guest-shutdown", true)]
    [InlineData(ShutdownCause.GuestPanic, "guest-panic", true)]
    public void Each_shutdown_cause_has_qemus_name_and_says_whether_the_guest_asked(ShutdownCause cause, string qmp, bool guest)
    {
        Assert.Equal(qmp, cause.ToQmp());
        Assert.Equal(guest, cause.IsGuest());
    }

    [Fact]
    public async Task Shutdown_carries_the_typed_reason_and_the_schema_lists_the_reasons()
    {
        await using var ferry = new FerryLikeServer();
        using var client = new RawQmpClient(ferry.Path);
        await client.NegotiateAsync();

        MachineCommands.EmitShutdown(ferry.Server, new MachineExit(ShutdownCause.GuestPanic, "guest panicked with code 7"));
        var shutdown = await client.ReadAsync();

        Assert.Equal("SHUTDOWN", shutdown["event"]!.GetValue<string>());
        Assert.Equal("""{"guest":true,"reason":"guest-panic"}""", shutdown["data"]!.ToJsonString());
        var schema = (JsonArray)(await client.CallAsync("""{"execute":"query-qmp-schema"}"""))["return"]!;
        var causes = schema.Single(e => e!["name"]!.GetValue<string>() == "ShutdownCause")!["values"]!.AsArray().Select(v => v!.GetValue<string>());
        Assert.Equal(["host-error", "host-qmp-quit", "host-signal", "guest-shutdown", "guest-panic"], causes);
        var states = schema.Single(e => e!["name"]!.GetValue<string>() == "RunState")!["values"]!.AsArray().Select(v => v!.GetValue<string>());
        Assert.Contains("inmigrate", states);
        Assert.Contains("postmigrate", states);
    }

    [Fact]
    public async Task Quit_ends_the_machine_as_a_qmp_quit()
    {
        await using var ferry = new FerryLikeServer();
        using var client = new RawQmpClient(ferry.Path);
        await client.NegotiateAsync();
        await client.CallAsync("""{"execute":"quit"}""");
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (ferry.Machine.EndedWith is null && DateTime.UtcNow < deadline)
            await Task.Delay(10);
        Assert.Equal(ShutdownCause.HostQmpQuit, ferry.Machine.EndedWith);
    }
}
