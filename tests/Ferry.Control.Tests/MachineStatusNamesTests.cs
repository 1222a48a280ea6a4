using Ferry.Machine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>query-status spells each machine status as QEMU does (and as Ferry did when Status was a string).</summary>
public sealed class MachineStatusNamesTests
{
    [Theory]
    [InlineData(MachineStatus.Prelaunch, "prelaunch")]
    [InlineData(MachineStatus.Running, "running")]
    [InlineData(MachineStatus.Paused, "paused")]
    [InlineData(MachineStatus.Shutdown, "shutdown")]
    public void Each_status_has_qemus_name(MachineStatus status, string qmp) => Assert.Equal(qmp, status.ToQmp());

    [Fact]
    public void Every_status_is_named() =>
        Assert.All(Enum.GetValues<MachineStatus>(), s => Assert.False(string.IsNullOrEmpty(s.ToQmp())));
}
