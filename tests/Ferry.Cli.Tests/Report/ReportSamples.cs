using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Migration.Engine;

namespace Ferry.Cli.Tests.Report;

/// <summary>
/// Reports as the CLI gets them: a MigrationStats made into JSON by MigrationJson.ToReport, the code that builds the
/// final MIGRATION event's ferry-info (what `--report` writes).
/// </summary>
internal static class ReportSamples
{
    private const long MiB = 1 << 20;

    /// <summary>A 4 GiB guest migrated in <paramref name="passes"/> passes (the last one inside the downtime).</summary>
    public static JsonObject Completed(int passes = 4, long maxBandwidth = 1024 * MiB, string target = "tcp:10.0.0.2:4444")
    {
        var list = new List<PassReport>();
        for (var i = 1; i <= passes; i++)
        {
            var first = i == 1;
            var final = i == passes && passes > 1;
            var normal = first ? 262_144L : final ? 37L : Math.Max(40_000L >> (i - 1), 90);
            var zero = first ? 51_200L : normal / 8;
            var bytes = normal * 4096 + zero * 16;
            var bandwidth = first ? 987.6 * MiB : 640.25 * MiB / Math.Sqrt(i);
            list.Add(new PassReport(i, bytes / bandwidth * 1000, bytes, normal, zero, first ? 131_072 : 12, first ? 65_536 : 0,
                final ? 0 : Math.Max(30_000L >> i, 37), final ? 0 : 41_250.0 / i, bandwidth, final ? 0 : 12.5 / i, i > 6 ? 20 : 0));
        }
        var phases = new DowntimePhases(0.412, 0.851, list[^1].DurationMs, 0, 1.207, 6.733, 0);
        var downtime = phases.PauseMs + phases.SyncMs + phases.FinalPassMs + phases.SaveStateMs + phases.CompleteMs;
        var live = list.Take(list.Count - 1).Sum(p => p.DurationMs);
        var stats = new MigrationStats
        {
            Status = MigrationStatus.Completed,
            TotalTimeMs = 23.5 + live + passes * 1.5 + downtime,
            SetupTimeMs = 23,
            DowntimeMs = downtime,
            Downtime = phases,
            ExpectedDowntimeMs = list.Count > 1 ? list[^2].ExpectedDowntimeMs : 0,
            TransferredBytes = list.Sum(p => p.Bytes),
            TotalBytes = 4096 * MiB,
            NormalPages = list.Sum(p => p.NormalPages),
            ZeroPages = list.Sum(p => p.ZeroPages),
            UntouchedPages = 600_000,
            BalloonedPages = list.Sum(p => p.BalloonedPages),
            HintedPages = list.Sum(p => p.HintedPages),
            DirtySyncCount = passes,
            DirtyPagesRate = list[^1].DirtyPagesPerSecond,
            Mbps = 7_812.5,
            ThrottlePercent = passes > 6 ? 20 : 0,
            Channels = 4,
            BalloonSkip = BalloonSkipReason.On,
            FreePageHint = FreePageHintReason.On,
            Passes = list,
        };
        return MigrationJson.ToReport(stats, Source, target, new MigrationParameters { MaxBandwidth = maxBandwidth });
    }

    /// <summary>A migration refused at setup: no pass ran, with an error and the reason it did not converge.</summary>
    public static JsonObject FailedBeforeAnyPass(string error = "connecting tcp:10.0.0.2:4444: Connection refused", string target = "tcp:10.0.0.2:4444")
    {
        var stats = new MigrationStats
        {
            Status = MigrationStatus.Failed,
            Error = error,
            ErrorKind = MigrationErrorKind.ChannelFailed,
            TotalTimeMs = 3.25,
            SetupTimeMs = 3,
            TotalBytes = 512 * MiB,
            Channels = 2,
            BalloonSkip = BalloonSkipReason.NoMustTellHost,
            FreePageHint = FreePageHintReason.GuestPoisons,
            PoisonValue = 0xAA,
            NotConverging = new NotConverging(1, NotConvergingReason.OverDowntimeLimit, 912, 300, 70_000, 80_000, 300 * MiB, AutoConvergeStep.Off, 0),
        };
        return MigrationJson.ToReport(stats, Source, target, new MigrationParameters());
    }

    /// <summary>A cancelled migration that had run one live pass.</summary>
    public static JsonObject CancelledAfterOnePass()
    {
        var pass = new PassReport(1, 812.5, 800 * MiB, 204_800, 1_000, 0, 0, 190_000, 233_000, 984 * MiB, 790, 0);
        var stats = new MigrationStats
        {
            Status = MigrationStatus.Cancelled,
            Error = "cancelled",
            ErrorKind = MigrationErrorKind.Cancelled,
            TotalTimeMs = 840.125,
            SetupTimeMs = 12,
            ExpectedDowntimeMs = 790,
            TransferredBytes = pass.Bytes,
            RemainingBytes = 190_000 * 4096L,
            TotalBytes = 1024 * MiB,
            NormalPages = pass.NormalPages,
            ZeroPages = pass.ZeroPages,
            UntouchedPages = 56_000,
            DirtySyncCount = 1,
            DirtyPagesRate = pass.DirtyPagesPerSecond,
            Mbps = 8_255.1,
            Channels = 1,
            Passes = [pass],
        };
        return MigrationJson.ToReport(stats, Source, "tcp:[::1]:4444", new MigrationParameters());
    }

    private const string Source = "unix:/run/ferry/vm-7.qmp";
}
