using Ferry.Kvm;

namespace Ferry.Migration.Engine;

/// <summary>What to do after a live pass.</summary>
public enum ConvergenceAction
{
    /// <summary>The rest fits the downtime limit: pause the guest and send the last pass.</summary>
    SwitchOver,

    /// <summary>Another live pass, the vCPUs as they are.</summary>
    Iterate,

    /// <summary>Another live pass, with the vCPUs throttled to <see cref="ConvergenceDecision.ThrottlePercent"/>.</summary>
    Throttle,

    /// <summary>
    /// Switch to postcopy (capability postcopy-ram): migrate-start-postcopy asked for it, or ferry-postcopy-after-passes
    /// passes in a row ended over the limit. The guest then runs on the destination, which pulls what is still owed.
    /// </summary>
    StartPostcopy,
}

/// <summary>Why a pass did not switch over.</summary>
public enum NotConvergingReason
{
    /// <summary>The expected downtime is over downtime-limit.</summary>
    OverDowntimeLimit,

    /// <summary>
    /// Within the limit, but pass 1's dirty set of a running guest holds every page it touched since logging began;
    /// one more live pass takes those out of the downtime.
    /// </summary>
    FirstPassDirtySet,
}

/// <summary>Where auto-converge stands after a pass that did not switch over.</summary>
public enum AutoConvergeStep
{
    /// <summary>The capability is off: the migration keeps iterating until it converges or is cancelled.</summary>
    Off,

    /// <summary>On, but the dirty share has not been over the threshold twice in a row yet.</summary>
    Watching,

    /// <summary>The vCPUs were throttled (further) after this pass.</summary>
    Throttled,
}

/// <summary>Why the migration keeps iterating, with the figures that say so (rendered for QMP at the control layer).</summary>
public sealed record NotConverging(
    int Pass,
    NotConvergingReason Reason,
    double ExpectedDowntimeMs,
    long DowntimeLimitMs,
    long DirtyPages,
    double DirtyPagesPerSecond,
    double BandwidthBytesPerSecond,
    AutoConvergeStep AutoConverge,
    int ThrottlePercent);

/// <summary>What one live pass measured, and what the policy needs to know besides.</summary>
public readonly record struct PassMeasurement(
    int Pass,
    long Bytes,
    double DurationMs,
    long DirtyPages,
    double PreviousBandwidth,
    long BandwidthLimit,
    bool GuestPaused,
    bool PostcopyRequested = false);

/// <summary>
/// The policy's state carried from pass to pass: the current throttle, the over-threshold streak, and how many passes
/// in a row ended with the expected downtime over the limit (for ferry-postcopy-after-passes).
/// </summary>
public readonly record struct ConvergenceState(int ThrottlePercent, int DirtyHighCount, int OverLimitStreak = 0);

/// <summary>The verdict on one pass, with the estimates it was made from.</summary>
public readonly record struct ConvergenceDecision(
    ConvergenceAction Action,
    ConvergenceState Next,
    double BandwidthBytesPerSecond,
    double ExpectedDowntimeMs,
    double DirtyPagesPerSecond,
    long RemainingBytes,
    NotConverging? NotConverging)
{
    public int ThrottlePercent => Next.ThrottlePercent;
}

/// <summary>
/// Convergence and auto-converge as one pure function of a pass's figures: no clock, no VM, no side effects, so
/// every rule is testable as a table. The engine measures, asks, and carries out the answer.
/// </summary>
public static class ConvergencePolicy
{
    /// <summary>A pass under this many bytes is too small to measure the link: the last pass's bandwidth stands if higher.</summary>
    public const long MinMeasuredBytes = 1 << 20;

    /// <summary>The guess when nothing was measured and there is no limit to go by (100 MiB/s).</summary>
    public const double FallbackBandwidth = 100 << 20;

    /// <summary>
    /// The bytes per second of a pass: what it sent over how long it took, unless it sent too little to tell (then
    /// the previous pass's figure, if higher); with nothing measured at all, the bandwidth limit or a fallback.
    /// </summary>
    public static double Bandwidth(long bytes, double seconds, double previousBandwidth, long bandwidthLimit)
    {
        var bandwidth = bytes >= MinMeasuredBytes ? bytes / seconds : Math.Max(previousBandwidth, bytes / seconds);
        if (bandwidth <= 0)
            bandwidth = bandwidthLimit > 0 ? bandwidthLimit : FallbackBandwidth;
        return bandwidth;
    }

    /// <param name="postcopyRam">The postcopy-ram capability is on: a migration that does not converge may switch to postcopy.</param>
    public static ConvergenceDecision Decide(in PassMeasurement pass, ConvergenceState state, MigrationParameters parameters, bool autoConverge, bool postcopyRam = false)
    {
        var seconds = Math.Max(pass.DurationMs / 1000, 1e-6);
        var bandwidth = Bandwidth(pass.Bytes, seconds, pass.PreviousBandwidth, pass.BandwidthLimit);
        var remaining = pass.DirtyPages * Page.Size;
        var expectedMs = remaining / bandwidth * 1000;
        var dirtyRate = pass.DirtyPages / seconds;

        // Pass 1's dirty set is the odd one: it holds every page the guest touched since logging began (on PVM even
        // a read marks a page once), so for an idle guest it is most of what pass 1 sent. A second live pass takes
        // those pages out of the downtime; later syncs show only real writes.
        var secondPassWorthIt = pass.Pass == 1 && pass.DirtyPages > 0 && !pass.GuestPaused;
        var withinLimit = expectedMs <= parameters.DowntimeLimitMs;
        if (withinLimit && !secondPassWorthIt)
            return new ConvergenceDecision(ConvergenceAction.SwitchOver, state, bandwidth, expectedMs, dirtyRate, remaining, null);

        // Not converging yet. QEMU's auto-converge rule: when the bytes dirtied during a pass exceed the threshold
        // share of the bytes sent in it, twice in a row, throttle (further).
        var dirtyHigh = remaining * 100.0 > pass.Bytes * (double)parameters.ThrottleTriggerThreshold ? state.DirtyHighCount + 1 : 0;
        var throttle = state.ThrottlePercent;
        var action = ConvergenceAction.Iterate;
        AutoConvergeStep step;
        if (autoConverge && dirtyHigh >= 2)
        {
            dirtyHigh = 0;
            throttle = throttle == 0 ? parameters.CpuThrottleInitial : Math.Min(parameters.MaxCpuThrottle, throttle + parameters.CpuThrottleIncrement);
            action = ConvergenceAction.Throttle;
            step = AutoConvergeStep.Throttled;
        }
        else
        {
            step = autoConverge ? AutoConvergeStep.Watching : AutoConvergeStep.Off;
        }
        var why = new NotConverging(
            pass.Pass, withinLimit ? NotConvergingReason.FirstPassDirtySet : NotConvergingReason.OverDowntimeLimit,
            expectedMs, parameters.DowntimeLimitMs, pass.DirtyPages, dirtyRate, bandwidth, step, throttle);

        // Postcopy, when allowed: asked for, or precopy stayed over the limit for the set number of passes. A pass within
        // the limit (pass 1's extra pass) breaks the streak; a migration that converges never switches (as QEMU).
        var overLimit = postcopyRam && !withinLimit ? state.OverLimitStreak + 1 : 0;
        if (postcopyRam && (pass.PostcopyRequested || (parameters.PostcopyAfterPasses > 0 && overLimit >= parameters.PostcopyAfterPasses)))
        {
            return new ConvergenceDecision(ConvergenceAction.StartPostcopy, state with { OverLimitStreak = overLimit }, bandwidth, expectedMs, dirtyRate, remaining,
                why with { AutoConverge = autoConverge ? AutoConvergeStep.Watching : AutoConvergeStep.Off, ThrottlePercent = state.ThrottlePercent });
        }
        return new ConvergenceDecision(action, new ConvergenceState(throttle, dirtyHigh, overLimit), bandwidth, expectedMs, dirtyRate, remaining, why);
    }
}
