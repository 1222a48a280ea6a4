using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// When precopy gives way to postcopy, as a table (the policy is a pure function): capability postcopy-ram,
/// migrate-start-postcopy, and ferry-postcopy-after-passes counting passes in a row over downtime-limit.
/// </summary>
public sealed class PostcopyConvergenceTests
{
    private const long MiB = 1 << 20;

    [Theory]
    // pass, dirty pages, postcopy-ram, requested, after-passes, over-limit streak so far, auto-converge => action, streak after
    // 10 MiB dirty at 10 MiB/s = 1000 ms, over the 300 ms limit:
    [InlineData(3, 2560L, false, false, 2, 5, false, ConvergenceAction.Iterate, 0)]        // capability off: never, the streak is not kept
    [InlineData(3, 2560L, false, true, 0, 0, false, ConvergenceAction.Iterate, 0)]         // asked for without the capability: ignored
    [InlineData(3, 2560L, true, false, 0, 7, false, ConvergenceAction.Iterate, 8)]         // after-passes 0: only when asked for
    [InlineData(3, 2560L, true, true, 0, 0, false, ConvergenceAction.StartPostcopy, 1)]    // migrate-start-postcopy
    [InlineData(2, 2560L, true, false, 2, 0, false, ConvergenceAction.Iterate, 1)]         // first pass over the limit
    [InlineData(3, 2560L, true, false, 2, 1, false, ConvergenceAction.StartPostcopy, 2)]   // second in a row: switch
    [InlineData(3, 2560L, true, false, 1, 0, false, ConvergenceAction.StartPostcopy, 1)]   // after-passes 1: the first over the limit
    [InlineData(3, 2560L, true, false, 2, 1, true, ConvergenceAction.StartPostcopy, 2)]    // before auto-converge would throttle
    // 1000 dirty pages at 100 MiB/s = 39 ms, within the limit: precopy converges, even when postcopy was asked for.
    [InlineData(3, 1000L, true, true, 1, 4, false, ConvergenceAction.SwitchOver, 4)]
    // Pass 1 within the limit but a running guest's first dirty set: the extra live pass breaks the streak...
    [InlineData(1, 1000L, true, false, 1, 3, false, ConvergenceAction.Iterate, 0)]
    // ... unless postcopy was asked for: then it switches rather than spend a pass.
    [InlineData(1, 1000L, true, true, 0, 0, false, ConvergenceAction.StartPostcopy, 0)]
    public void Switches_to_postcopy_when_asked_or_after_passes_over_the_limit(
        int pass, long dirtyPages, bool postcopyRam, bool requested, int afterPasses, int streak, bool autoConverge, ConvergenceAction action, int nextStreak)
    {
        var bytes = dirtyPages == 2560 ? 10 * MiB : 100 * MiB;
        var parameters = new MigrationParameters { PostcopyAfterPasses = afterPasses };
        var decision = ConvergencePolicy.Decide(
            new PassMeasurement(pass, bytes, 1000, dirtyPages, 0, 0, false, requested), new ConvergenceState(0, 1, streak), parameters, autoConverge, postcopyRam);

        Assert.Equal(action, decision.Action);
        Assert.Equal(nextStreak, decision.Next.OverLimitStreak);
        if (action == ConvergenceAction.StartPostcopy)
        {
            // The switch keeps the vCPUs as they are (no throttle step) and says why precopy did not converge.
            Assert.Equal(0, decision.ThrottlePercent);
            Assert.NotNull(decision.NotConverging);
        }
    }

    [Fact]
    public void The_parameter_and_the_capability_are_declared_once_with_their_surfaces()
    {
        var parameter = MigrationParameterTable.Find("ferry-postcopy-after-passes")!;
        Assert.Equal((0L, 1000L, 0L, "postcopy-after-passes"), (parameter.Min, parameter.Max, parameter.Default, parameter.CliOption));
        Assert.Equal(5, parameter.Get(parameter.Set(new MigrationParameters(), 5)));
        Assert.Equal("ferry-postcopy-after-passes 1001 is outside 0..1000", parameter.Check(1001));
        var capability = MigrationCapabilityTable.Find("postcopy-ram")!;
        Assert.False(capability.Default);
        Assert.Equal("postcopy", capability.CliFlag);
        Assert.True(capability.Get(capability.Set(new MigrationCapabilities(), true)));
        Assert.Equal("postcopy-active", MigrationStatus.PostcopyActive.ToQmp());
        Assert.Equal("postcopy-paused", MigrationStatus.PostcopyPaused.ToQmp());
    }
}
