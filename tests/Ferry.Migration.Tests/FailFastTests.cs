using System.Diagnostics;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// Failures end fast, say why, and never leave two running copies (docs/migration.md, Failure): the point of no
/// return, a reset on one channel, a silent partition, the destination's reason reaching the source. Time bounds
/// are generous (seconds where the engine needs well under one) so a loaded machine does not fail them; what they
/// guard against is the 30 s or endless waits of before.
/// </summary>
public sealed class FailFastTests
{
    private const ulong MiB = 1UL << 20;

    /// <summary>Well above the ~1 s a fault takes to end both sides, well below the 30 s waits it replaces.</summary>
    private static readonly TimeSpan FastEnough = TimeSpan.FromSeconds(8);

    private sealed record Outcome(MigrationException Source, TimeSpan SourceTook, Task<IncomingReport> Receive, PrecopyMigration Migration);

    private static Outcome Run(SyntheticVm vm, SyntheticTarget target, InMemoryChannels channels, MigrationParameters parameters, Action<PrecopyMigration>? whileRunning = null)
    {
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None, TimeSpan.FromMilliseconds(parameters.ChannelTimeoutMs)));
        var migration = new PrecopyMigration(vm, parameters, new MigrationCapabilities());
        var clock = Stopwatch.StartNew();
        var run = Task.Run(() => migration.Run(channels));
        whileRunning?.Invoke(migration);
        var error = Assert.Throws<MigrationException>(() => run.GetAwaiter().GetResult());
        return new Outcome(error, clock.Elapsed, receive, migration);
    }

    /// <summary>A running 16 MiB guest with its first <paramref name="pages"/> pages filled.</summary>
    private static SyntheticVm RunningVm(ulong pages)
    {
        var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, pages, 1);
        vm.Start();
        return vm;
    }

    /// <summary>Until the first 64 KiB left (not a fixed sleep: a loaded machine may start late).</summary>
    private static void WaitUntilSending(PrecopyMigration migration)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (migration.Snapshot().TransferredBytes < 64 * 1024 && DateTime.UtcNow < deadline)
            Thread.Sleep(5);
    }

    private static void AssertNoDotnetNames(string message)
    {
        Assert.DoesNotContain("Exception", message, StringComparison.Ordinal);
        Assert.DoesNotContain("System.", message, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void A_return_path_cut_right_after_the_destination_resumed_leaves_the_source_paused_and_says_so(bool silent)
    {
        using var vm = RunningVm(300);
        var resumes = 0;
        vm.Resuming += () => Interlocked.Increment(ref resumes);
        using var target = new SyntheticTarget(vm.Blocks);
        var cutter = new ResumedCutter(silent);
        var channels = new InMemoryChannels(cutter.Wrap);

        var outcome = Run(vm, target, channels, new MigrationParameters { MultifdChannels = 2, SwitchoverTimeoutMs = 6000, ChannelTimeoutMs = 3000 });
        using var migration = outcome.Migration;

        Assert.True(cutter.Cut);
        Assert.True(target.Resumed); // the guest runs on the destination
        Assert.True(outcome.Receive.GetAwaiter().GetResult().DataPages > 0);
        Assert.True(vm.IsPaused, $"the source resumed after: {outcome.Source.Message}");
        Assert.Equal(0, resumes);
        Assert.True(outcome.Source.DestinationMayBeRunning);
        var stats = migration.Snapshot();
        Assert.Equal(MigrationStatus.Failed, stats.Status);
        Assert.True(stats.DestinationMayBeRunning);
        Assert.Contains("postmigrate", stats.Error, StringComparison.Ordinal);
        Assert.Contains("'cont'", stats.Error, StringComparison.Ordinal);
        Assert.False(vm.DirtyLogging);
        AssertNoDotnetNames(stats.Error!);
        Assert.True(outcome.SourceTook < FastEnough, $"took {outcome.SourceTook}");
    }

    [Fact]
    public void Over_tcp_a_proxy_resetting_the_return_path_at_resumed_leaves_the_source_paused()
    {
        using var vm = RunningVm(300);
        var resumes = 0;
        vm.Resuming += () => Interlocked.Increment(ref resumes);
        using var target = new SyntheticTarget(vm.Blocks);
        using var listener = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        using var proxy = new TcpProxy(new System.Net.IPEndPoint(System.Net.IPAddress.Loopback, listener.Uri.Port));
        var receive = Task.Run(() => MigrationReceiver.Receive(target, listener, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2, SwitchoverTimeoutMs = 5000 }, new MigrationCapabilities());
        var clock = Stopwatch.StartNew();

        var error = Assert.Throws<MigrationException>(() => migration.Run(new TcpChannelConnector(MigrationUri.Parse($"tcp:127.0.0.1:{proxy.Port}"))));

        Assert.True(clock.Elapsed < FastEnough, $"took {clock.Elapsed}");
        Assert.True(proxy.Cut);
        Assert.True(target.Resumed);
        receive.GetAwaiter().GetResult();
        Assert.True(error.DestinationMayBeRunning, error.Message);
        Assert.True(vm.IsPaused);
        Assert.Equal(0, resumes);
        Assert.Equal(MigrationStatus.Failed, migration.Status);
        Assert.True(migration.Snapshot().DestinationMayBeRunning);
        AssertNoDotnetNames(error.Message);
    }

    [Fact]
    public void A_failure_before_the_point_of_no_return_resumes_the_source()
    {
        using var vm = RunningVm(300);
        using var target = new SyntheticTarget(vm.Blocks);
        // END truncated: the state was not all handed over, so the destination cannot run the guest.
        var saboteur = new StreamSaboteur(RecordType.End, truncate: true);
        var channels = new InMemoryChannels(saboteur.Wrap);

        var outcome = Run(vm, target, channels, new MigrationParameters { MultifdChannels = 2, ChannelTimeoutMs = 1000 });
        using var migration = outcome.Migration;

        Assert.False(vm.IsPaused, outcome.Source.Message);
        Assert.False(outcome.Source.DestinationMayBeRunning);
        Assert.False(migration.Snapshot().DestinationMayBeRunning);
        Assert.False(target.Resumed);
        Assert.Throws<MigrationException>(() => outcome.Receive.GetAwaiter().GetResult());
    }

    public enum ResetPoint
    {
        /// <summary>While pass 1 streams (channel 0 has nothing to send: all data is on channel 1).</summary>
        DuringPass,

        /// <summary>At the first dirty-log sync, right after the destination acknowledged pass 1.</summary>
        AtSync,

        /// <summary>At the switch-over, as the guest pauses.</summary>
        AtPause,
    }

    [Theory]
    [InlineData(ResetPoint.DuringPass)]
    [InlineData(ResetPoint.AtSync)]
    [InlineData(ResetPoint.AtPause)]
    public void A_reset_on_channel_1_ends_both_sides_fast_and_the_source_reports_the_destinations_reason(ResetPoint point)
    {
        using var vm = new SyntheticVm(16 * MiB);
        // Chunks 1 and 3 (channel 1 of 2) hold every page; channel 0 stays quiet.
        vm.Fill(0, 512, 512, 1);
        vm.Fill(0, 1536, 512, 1);
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        void Reset()
        {
            lock (channels.Ends)
                channels.Ends[2].Break(); // channel 1's pipe, both directions
        }
        var parameters = new MigrationParameters { MultifdChannels = 2, ChannelTimeoutMs = 30_000 };
        switch (point)
        {
            case ResetPoint.AtSync:
                var once = 0;
                vm.Syncing += _ =>
                {
                    if (Interlocked.Exchange(ref once, 1) == 0)
                        Reset();
                };
                break;
            case ResetPoint.AtPause:
                vm.Pausing += Reset;
                break;
            default:
                parameters = parameters with { MaxBandwidth = 2 << 20 }; // 4 MiB at 2 MiB/s: pass 1 takes 2 s
                break;
        }

        var outcome = Run(vm, target, channels, parameters, migration =>
        {
            if (point != ResetPoint.DuringPass)
                return;
            WaitUntilSending(migration);
            Reset();
        });
        using var migration = outcome.Migration;

        // Both sides end within the bound, not after a 30 s channel time-out (set here on purpose).
        var destination = Assert.Throws<MigrationException>(() => outcome.Receive.WaitAsync(FastEnough).GetAwaiter().GetResult());
        Assert.True(outcome.SourceTook < FastEnough, $"the source took {outcome.SourceTook}");
        Assert.Equal($"the destination failed: {destination.Message}", outcome.Source.Message);
        Assert.Equal(MigrationErrorKind.DestinationFailed, outcome.Source.Kind);
        AssertNoDotnetNames(outcome.Source.Message);
        Assert.False(vm.IsPaused);
        Assert.False(target.Resumed);
    }

    [Fact]
    public void A_silent_partition_fails_both_sides_within_the_channel_timeout()
    {
        using var vm = RunningVm(4096);
        using var target = new SyntheticTarget(vm.Blocks);
        var blackhole = new Blackhole();
        var channels = new InMemoryChannels(blackhole.Wrap);
        var parameters = new MigrationParameters { MultifdChannels = 2, MaxBandwidth = 2 << 20, ChannelTimeoutMs = 1000 };

        var outcome = Run(vm, target, channels, parameters, migration =>
        {
            WaitUntilSending(migration);
            blackhole.Freeze();
        });
        using var migration = outcome.Migration;

        // 1 s time-out: each side gives up after 1..1.25 s of silence.
        var destination = Assert.Throws<MigrationException>(() => outcome.Receive.WaitAsync(FastEnough).GetAwaiter().GetResult());
        Assert.Equal(MigrationErrorKind.Timeout, destination.Kind);
        Assert.Contains("no data or keepalive from the source for 1000 ms", destination.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationErrorKind.Timeout, outcome.Source.Kind);
        Assert.Contains("no reply or keepalive from the destination for 1000 ms", outcome.Source.Message, StringComparison.Ordinal);
        Assert.True(outcome.SourceTook < FastEnough, $"the source took {outcome.SourceTook}");
        Assert.False(vm.IsPaused);
    }

    [Fact]
    public void An_idle_migration_longer_than_the_channel_timeout_is_kept_alive()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        // A guest that never answers the hint run: pass 1 waits 5 s with nothing on any channel, 2.5 time-outs. (A 1 s
        // time-out made this fail under a loaded full test run: a keepalive every 250 ms was once late by a second.)
        vm.SyntheticBalloon = new SyntheticBalloon(vm) { FreeRanges = null };
        vm.Start();
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None, TimeSpan.FromSeconds(2)));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2, HintBudgetMs = 5000, ChannelTimeoutMs = 2000 }, new MigrationCapabilities());

        var stats = migration.Run(channels);

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(receive.GetAwaiter().GetResult().SourceToldResumed);
    }

    [Fact]
    public void The_engine_announces_a_failure_once()
    {
        using var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 100, 1);
        using var other = new SyntheticVm(32 * MiB);
        using var target = new SyntheticTarget(other.Blocks);
        var channels = new InMemoryChannels();
        _ = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());
        var statuses = new List<MigrationStatus>();
        migration.StatusChanged += s =>
        {
            lock (statuses)
                statuses.Add(s);
        };

        Assert.Throws<MigrationException>(() => migration.Run(channels));

        Assert.Single(statuses, s => s.IsFinal());
        Assert.Equal(MigrationStatus.Failed, statuses[^1]);
        // QMP's MIGRATION event for a final status carries the figures and is sent by the control layer once.
        Assert.Equal([MigrationStatus.Completed, MigrationStatus.Failed, MigrationStatus.Cancelled], Enum.GetValues<MigrationStatus>().Where(s => s.IsFinal()));
    }

    [Fact]
    public void An_aggregate_or_dotnet_exception_is_never_what_the_user_reads()
    {
        var (kind, message) = PrecopyMigration.Describe(new AggregateException(new IOException("Connection reset by peer")), null);
        Assert.Equal((MigrationErrorKind.ChannelFailed, "a migration channel broke: Connection reset by peer"), (kind, message));
        Assert.Equal("the destination failed: out of memory", PrecopyMigration.Describe(new IOException("Broken pipe"), "out of memory").Item2);
        AssertNoDotnetNames(PrecopyMigration.Describe(new ObjectDisposedException("System.Net.Sockets.NetworkStream"), null).Item2);
        AssertNoDotnetNames(PrecopyMigration.Describe(new InvalidOperationException("boom"), null).Item2);
    }
}
