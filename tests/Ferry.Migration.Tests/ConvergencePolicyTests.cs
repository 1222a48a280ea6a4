using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// The convergence and auto-converge rules as a table: no VM, no clock. Defaults unless a column says otherwise:
/// downtime-limit 300 ms, throttle-trigger-threshold 50 %, cpu-throttle-initial 20, -increment 10, max 99.
/// </summary>
public sealed class ConvergencePolicyTests
{
    private const long MiB = 1 << 20;

    [Theory]
    // A pass of at least 1 MiB is its own measure.
    [InlineData(8 * MiB, 1.0, 0.0, 0L, 8.0 * MiB)]
    [InlineData(2 * MiB, 1.0, 100.0 * MiB, 0L, 2.0 * MiB)]
    // A small pass cannot tell: the previous pass's bandwidth stands when it is higher.
    [InlineData(MiB / 2, 1.0, 4.0 * MiB, 0L, 4.0 * MiB)]
    [InlineData(MiB / 2, 0.5, 0.0, 0L, 1.0 * MiB)]
    // Nothing measured at all: the limit, else 100 MiB/s.
    [InlineData(0L, 1.0, 0.0, 2 * MiB, 2.0 * MiB)]
    [InlineData(0L, 1.0, 0.0, 0L, 100.0 * MiB)]
    public void Bandwidth_is_measured_or_carried_over_or_guessed(long bytes, double seconds, double previous, long limit, double expected) =>
        Assert.Equal(expected, ConvergencePolicy.Bandwidth(bytes, seconds, previous, limit));

    [Theory]
    // pass, bytes, ms, dirty pages, previous bandwidth, paused, auto-converge, throttle, streak, downtime-limit
    //   => action, throttle, streak, reason (null = switch over), auto-converge step
    // 100 MiB/s, 1000 dirty pages: 39 ms expected, within 300.
    [InlineData(2, 100 * MiB, 1000.0, 1000L, 0.0, false, false, 0, 0, 300L, ConvergenceAction.SwitchOver, 0, 0, null, null)]
    // Exactly at the limit (2 MiB at 8 MiB/s = 250 ms): switch over.
    [InlineData(2, 8 * MiB, 1000.0, 512L, 0.0, false, false, 0, 0, 250L, ConvergenceAction.SwitchOver, 0, 0, null, null)]
    // A tiny pass measured against the previous pass's 100 MiB/s: 0.4 ms.
    [InlineData(4, 64L * 1024, 1000.0, 10L, 100.0 * MiB, false, false, 0, 0, 300L, ConvergenceAction.SwitchOver, 0, 0, null, null)]
    // Pass 1 within the limit, but a running guest left its first dirty set: one more live pass.
    [InlineData(1, 100 * MiB, 1000.0, 1000L, 0.0, false, false, 0, 0, 300L, ConvergenceAction.Iterate, 0, 0, NotConvergingReason.FirstPassDirtySet, AutoConvergeStep.Off)]
    // ... not for a paused guest, nor for a pass 1 that left nothing dirty.
    [InlineData(1, 100 * MiB, 1000.0, 1000L, 0.0, true, false, 0, 0, 300L, ConvergenceAction.SwitchOver, 0, 0, null, null)]
    [InlineData(1, 100 * MiB, 1000.0, 0L, 0.0, false, false, 0, 0, 300L, ConvergenceAction.SwitchOver, 0, 0, null, null)]
    // 10 MiB dirty at 10 MiB/s: 1000 ms, over the limit. Without auto-converge it only iterates, however long the streak.
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, false, 0, 5, 300L, ConvergenceAction.Iterate, 0, 6, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Off)]
    // Auto-converge (QEMU's rule): dirtied bytes over threshold % of the bytes sent, twice in a row, throttle.
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, true, 0, 0, 300L, ConvergenceAction.Iterate, 0, 1, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Watching)]
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, true, 0, 1, 300L, ConvergenceAction.Throttle, 20, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Throttled)]
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, true, 20, 1, 300L, ConvergenceAction.Throttle, 30, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Throttled)]
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, true, 95, 1, 300L, ConvergenceAction.Throttle, 99, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Throttled)]
    [InlineData(3, 10 * MiB, 1000.0, 2560L, 0.0, false, true, 99, 1, 300L, ConvergenceAction.Throttle, 99, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Throttled)]
    // Over the limit but dirtying under the threshold (10 MiB dirty of 100 MiB sent): the streak starts again.
    [InlineData(3, 100 * MiB, 10_000.0, 2560L, 0.0, false, true, 20, 1, 300L, ConvergenceAction.Iterate, 20, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Watching)]
    // Exactly at the threshold (10 MiB dirty of 20 MiB sent) is not over it.
    [InlineData(3, 20 * MiB, 1000.0, 2560L, 0.0, false, true, 0, 1, 300L, ConvergenceAction.Iterate, 0, 0, NotConvergingReason.OverDowntimeLimit, AutoConvergeStep.Watching)]
    // The streak may span pass 1's extra pass: pass 1 within the limit but dirty-high counts.
    [InlineData(1, 4 * MiB, 1000.0, 2000L, 0.0, false, true, 0, 0, 3000L, ConvergenceAction.Iterate, 0, 1, NotConvergingReason.FirstPassDirtySet, AutoConvergeStep.Watching)]
    public void Decides_switch_over_iterate_or_throttle(
        int pass, long bytes, double ms, long dirtyPages, double previousBandwidth, bool paused, bool autoConverge, int throttle, int streak, long downtimeLimit,
        ConvergenceAction action, int nextThrottle, int nextStreak, NotConvergingReason? reason, AutoConvergeStep? step)
    {
        var parameters = new MigrationParameters { DowntimeLimitMs = downtimeLimit };
        var decision = ConvergencePolicy.Decide(
            new PassMeasurement(pass, bytes, ms, dirtyPages, previousBandwidth, 0, paused), new ConvergenceState(throttle, streak), parameters, autoConverge);

        Assert.Equal(action, decision.Action);
        Assert.Equal(dirtyPages * 4096, decision.RemainingBytes);
        if (action == ConvergenceAction.SwitchOver)
        {
            Assert.Null(decision.NotConverging);
            Assert.Equal(new ConvergenceState(throttle, streak), decision.Next);
            return;
        }
        Assert.Equal(new ConvergenceState(nextThrottle, nextStreak), decision.Next);
        var why = Assert.IsType<NotConverging>(decision.NotConverging);
        Assert.Equal((pass, reason!.Value, step!.Value, nextThrottle, downtimeLimit, dirtyPages), (why.Pass, why.Reason, why.AutoConverge, why.ThrottlePercent, why.DowntimeLimitMs, why.DirtyPages));
        Assert.Equal(decision.ExpectedDowntimeMs, why.ExpectedDowntimeMs);
    }

    [Fact]
    public void Expected_downtime_and_dirty_rate_follow_from_the_pass()
    {
        // 8 MiB in 500 ms = 16 MiB/s; 1024 dirty pages = 4 MiB = 250 ms; 2048 pages/s.
        var decision = ConvergencePolicy.Decide(new PassMeasurement(2, 8 * MiB, 500, 1024, 0, 0, false), default, new MigrationParameters(), false);

        Assert.Equal(16.0 * MiB, decision.BandwidthBytesPerSecond);
        Assert.Equal(250.0, decision.ExpectedDowntimeMs);
        Assert.Equal(2048.0, decision.DirtyPagesPerSecond);
        Assert.Equal(ConvergenceAction.SwitchOver, decision.Action);
    }

    [Fact]
    public void Throttle_steps_follow_the_parameters()
    {
        var parameters = new MigrationParameters { CpuThrottleInitial = 35, CpuThrottleIncrement = 40, MaxCpuThrottle = 80, ThrottleTriggerThreshold = 10 };
        // 2 MiB dirty of 10 MiB sent = 20 % > 10 %; 200 ms expected at 10 MiB/s is under 300 ms but it is pass 1 of a running guest.
        var pass = new PassMeasurement(1, 10 * MiB, 1000, 512, 0, 0, false);
        var first = ConvergencePolicy.Decide(pass, new ConvergenceState(0, 1), parameters, autoConverge: true);
        var second = ConvergencePolicy.Decide(pass, first.Next with { DirtyHighCount = 1 }, parameters, autoConverge: true);

        Assert.Equal((ConvergenceAction.Throttle, 35), (first.Action, first.ThrottlePercent));
        Assert.Equal((ConvergenceAction.Throttle, 75), (second.Action, second.ThrottlePercent));
        Assert.Equal(80, ConvergencePolicy.Decide(pass, second.Next with { DirtyHighCount = 1 }, parameters, autoConverge: true).ThrottlePercent);
    }
}
