using Ferry.Control;
using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>The final table's postcopy rows, from query-migrate's fields as the control layer writes them.</summary>
public sealed class PostcopyReportTests
{
    [Fact]
    public void A_postcopy_migration_shows_owed_pages_requests_latency_and_blocktime()
    {
        var stats = new MigrationStats
        {
            Status = MigrationStatus.Completed,
            Postcopy = new PostcopyStats
            {
                OwedPages = 1000, UrgentPages = 40, BackgroundPages = 960, Requests = 42, RequestsForSentPages = 2, ActiveMs = 812.5, Recoveries = 1,
                PausedMs = 300, PausedBecause = "a migration channel broke", DestinationFigures = true, Faults = 45, BlocktimeMs = 3.25,
                VcpuBlocktimeMs = [10, 12], LatencyP50Us = 120, LatencyP99Us = 950, LatencyMaxUs = 1300,
            },
        };

        var rows = MigrationReport.Totals(MigrationJson.ToQmp(stats, passes: true)).ToDictionary(r => r.Label, r => r.Value);

        Assert.Equal("1,000 pages owed at the switch: 960 in the background, 40 on request; 812.5 ms", rows["postcopy"]);
        Assert.Equal("42 (2 for pages already on their way)", rows["postcopy-requests"]);
        Assert.Equal("45; fault to page: p50 120 µs, p99 950 µs, max 1300 µs", rows["postcopy faults"]);
        Assert.Equal("3.25 ms all vCPUs blocked; per vCPU (ms): 10, 12", rows["postcopy-blocktime"]);
        Assert.Equal("1 recoveries, 300 ms paused; last: a migration channel broke", rows["postcopy paused"]);
    }

    [Fact]
    public void A_precopy_migration_has_no_postcopy_rows() =>
        Assert.DoesNotContain(MigrationReport.Totals(MigrationJson.ToQmp(new MigrationStats { Status = MigrationStatus.Completed }, passes: true)), r => r.Label.StartsWith("postcopy", StringComparison.Ordinal));
}
