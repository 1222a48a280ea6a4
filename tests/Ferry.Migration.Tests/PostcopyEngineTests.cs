using System.Buffers.Binary;
using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// Postcopy end to end without KVM: a synthetic source guest, the real engine and receiver over in-memory channels,
/// and a destination whose memory is <see cref="SyntheticPostcopyMemory"/> with host threads as vCPUs that block on
/// owed pages and check every page they read against the source's final memory.
/// </summary>
public sealed class PostcopyEngineTests
{
    private const ulong MiB = 1UL << 20;

    private static readonly MigrationCapabilities Postcopy = new() { PostcopyRam = true };

    /// <summary>A destination with postcopy memory and a reading guest that starts when the guest resumes.</summary>
    private sealed class Destination : IDisposable
    {
        public Destination(SyntheticVm vm, int vcpus, IReadOnlyList<(int Block, ulong Page)> reads)
        {
            Target = new SyntheticTarget(vm.Blocks);
            Memory = new SyntheticPostcopyMemory(Target.Blocks, vcpus);
            Target.Postcopy = Memory;
            Guest = new ReadingGuest(Memory, vm, vcpus, reads);
            Target.GuestResumed += Guest.Start;
        }

        public SyntheticTarget Target { get; }
        public SyntheticPostcopyMemory Memory { get; }
        public ReadingGuest Guest { get; }
        public PostcopyIncoming Incoming { get; } = new();
        public Task<IncomingReport>? Receiving { get; private set; }
        public CancellationTokenSource Cancel { get; } = new();

        public void Receive(IChannelListener listener) =>
            Receiving = Task.Run(() => MigrationReceiver.Receive(Target, listener, Cancel.Token, TimeSpan.FromSeconds(5), Incoming));

        public void Dispose()
        {
            Cancel.Cancel();
            Memory.Release();
            Guest.Stop();
            Target.Dispose();
        }
    }

    /// <summary>
    /// Never converging (a 1 ms downtime limit), and pass 1 at 64 MiB/s so that it lasts long enough for the writing
    /// guest to dirty its working set whatever the load (a pass 1 with nothing dirty would simply converge).
    /// </summary>
    private static MigrationParameters Switching(int channels) => new() { MultifdChannels = channels, DowntimeLimitMs = 1, MaxBandwidth = (long)(64 * MiB) };

    /// <summary>A synthetic guest with <paramref name="filled"/> pages of data, rewriting its first <paramref name="workingSet"/> pages.</summary>
    private static SyntheticVm WritingGuest(ulong size, ulong filled, ulong workingSet, int pagesPerSecond)
    {
        var vm = new SyntheticVm(size);
        vm.Fill(0, 0, filled, 1);
        vm.WorkingSet = (0, workingSet);
        vm.PagesPerSecond = pagesPerSecond;
        vm.Start();
        return vm;
    }

    /// <summary>A migration that switches to postcopy after pass 1 (migrate-start-postcopy), then runs at <paramref name="postcopyBandwidth"/> bytes/s.</summary>
    private static PrecopyMigration PostcopyAfterPass1(SyntheticVm vm, MigrationParameters parameters, long postcopyBandwidth)
    {
        var migration = new PrecopyMigration(vm, parameters, Postcopy);
        migration.PassCompleted += pass =>
        {
            if (pass.Pass != 1)
                return;
            migration.SetMaxBandwidth(postcopyBandwidth);
            migration.StartPostcopy();
        };
        return migration;
    }

    /// <summary>
    /// The guest writes its first <paramref name="pages"/> pages again at every dirty-log sync while it runs, so they
    /// are dirty at the end of every pass and owed at the switch however little CPU its writer thread gets (under a
    /// loaded full run a starved writer once left pass 1 clean: the migration converged and never switched).
    /// </summary>
    private static void DirtyAtEverySync(SyntheticVm vm, ulong pages)
    {
        var generation = 100UL;
        vm.Syncing += _ =>
        {
            if (!vm.IsPaused)
                vm.Fill(0, 0, pages, Interlocked.Increment(ref generation));
        };
    }

    private static List<(int Block, ulong Page)> Pages(int block, ulong first, ulong count) => [.. Enumerable.Range(0, (int)count).Select(i => (block, first + (ulong)i))];

    /// <summary>Waits for a condition that other threads bring about; fails the test with what it waited for.</summary>
    private static void WaitUntil(Func<bool> condition, string what, double seconds = 20)
    {
        var clock = Stopwatch.StartNew();
        while (!condition())
        {
            if (clock.Elapsed.TotalSeconds > seconds)
                Assert.Fail($"timed out waiting for {what}");
            Thread.Sleep(5);
        }
    }

    private static void AssertNoViolations(Destination destination)
    {
        Assert.Empty(destination.Memory.Violations);
        Assert.Empty(destination.Guest.Errors);
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void A_guest_dirtying_faster_than_the_bandwidth_completes_with_postcopy(int vcpus)
    {
        using var vm = new SyntheticVm(32 * MiB);
        vm.Fill(0, 0, 2048, 1);
        vm.WorkingSet = (0, 1024);
        vm.PagesPerSecond = 50_000; // 200 MB/s of writes against 16 MiB/s of link
        vm.Start();
        using var destination = new Destination(vm, vcpus, Pages(0, 0, 4096));
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        var parameters = new MigrationParameters { MultifdChannels = 2, MaxBandwidth = (long)(16 * MiB), DowntimeLimitMs = 20, PostcopyAfterPasses = 2 };
        using var migration = new PrecopyMigration(vm, parameters, Postcopy);
        var statuses = new List<MigrationStatus>();
        migration.StatusChanged += s =>
        {
            lock (statuses)
                statuses.Add(s);
        };

        var stats = migration.Run(channels);
        var report = destination.Receiving!.GetAwaiter().GetResult();
        destination.Guest.Join();

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Contains(MigrationStatus.PostcopyActive, statuses);
        Assert.DoesNotContain(MigrationStatus.Device, statuses); // no stop-and-copy pass
        Assert.True(vm.IsPaused);
        Assert.Equal(2, stats.Passes.Count); // switched after two passes over the limit
        var postcopy = stats.Postcopy!;
        Assert.True(postcopy.OwedPages > 0);
        Assert.Equal(postcopy.OwedPages, postcopy.UrgentPages + postcopy.BackgroundPages);
        Assert.True(postcopy.DestinationFigures);
        Assert.True(postcopy.Faults > 0, "the reading guest faulted on owed pages");
        Assert.Equal(postcopy.OwedPages, report.Postcopy!.UrgentPages + report.Postcopy.BackgroundPages);
        Assert.Equal(0, report.Postcopy.DuplicatePages);
        Assert.Equal(vcpus, postcopy.VcpuBlocktimeMs.Count);
        Assert.True(postcopy.LatencyP99Us >= postcopy.LatencyP50Us && postcopy.LatencyP50Us > 0);
        Assert.NotNull(stats.DowntimeMs);
        Assert.True(destination.Memory.Completed);
        AssertNoViolations(destination);
        Assert.Equal(vm.Generation, BitConverter.ToInt64(destination.Target.State![0].Blob));
        PrecopyEngineTests.AssertSameMemory(vm, destination.Target);
    }

    [Fact]
    public void Cutting_the_connection_after_the_switch_and_recovering_loses_nothing_20_times()
    {
        var random = new Random(14);
        var cuts = 0;
        for (var round = 0; round < 20; round++)
        {
            using var vm = WritingGuest(16 * MiB, 1024, 512, 100_000);
            using var destination = new Destination(vm, 2, Pages(0, 0, 1536));
            var channels = new InMemoryChannels();
            destination.Receive(channels);
            // Postcopy at 2 MiB/s: its 512+ owed pages take about a second.
            using var migration = PostcopyAfterPass1(vm, Switching(2), (long)(2 * MiB));
            var delay = random.Next(0, 400);
            var cut = 0;
            destination.Incoming.StatusChanged += status =>
            {
                if (status == MigrationStatus.PostcopyActive && Interlocked.Exchange(ref cut, 1) == 0)
                {
                    _ = Task.Delay(delay).ContinueWith(_ =>
                    {
                        if (destination.Incoming.Status == MigrationStatus.PostcopyActive)
                            channels.BreakAll();
                    }, TaskScheduler.Default);
                }
            };
            var running = Task.Run(() => migration.Run(channels));

            WaitUntil(() => running.IsCompleted || (migration.Status == MigrationStatus.PostcopyPaused && destination.Incoming.Status == MigrationStatus.PostcopyPaused),
                $"round {round}: both sides paused after the cut at {delay} ms");
            var wasCut = !running.IsCompleted;
            if (wasCut)
            {
                cuts++;
                Assert.True(vm.IsPaused);
                Assert.NotNull(migration.Snapshot().Postcopy!.PausedBecause);
                var again = new InMemoryChannels();
                destination.Incoming.Recover(again);
                migration.ResumePostcopy(again);
            }
            if (!running.Wait(TimeSpan.FromSeconds(30)) || !destination.Receiving!.Wait(TimeSpan.FromSeconds(30)))
            {
                Assert.Fail($"round {round} (cut at {delay} ms: {wasCut}): source {migration.Status} ({migration.Snapshot().Postcopy}), " +
                    $"destination {destination.Incoming.Status} ({destination.Incoming.Stats()}), {destination.Memory.PlacedCount} pages placed");
            }
            var stats = running.Result;
            var report = destination.Receiving!.Result;
            destination.Guest.Join();

            Assert.Equal(MigrationStatus.Completed, stats.Status);
            Assert.Equal(MigrationStatus.Completed, destination.Incoming.Status);
            AssertNoViolations(destination);
            PrecopyEngineTests.AssertSameMemory(vm, destination.Target);
            Assert.Equal(wasCut ? 1 : 0, stats.Postcopy!.Recoveries);
            Assert.Equal(stats.Postcopy.Recoveries, report.Postcopy!.Recoveries);
        }
        Assert.True(cuts >= 15, $"only {cuts} of 20 rounds were cut before the postcopy ended");
    }

    [Fact]
    public void Pages_never_touched_zero_ballooned_or_hinted_are_resolved_locally_without_a_request()
    {
        using var vm = new SyntheticVm(64 * MiB);
        vm.Fill(0, 0, 4096, 1);
        vm.Blocks[0].Mapping.GetSpan(1000 * 4096, 100 * 4096).Clear();          // touched, zero: [1000, 1100)
        var balloon = new SyntheticBalloon(vm) { FreeRanges = [(0, 2000, 200)] };  // hinted free: [2000, 2200)
        vm.SyntheticBalloon = balloon;
        balloon.Inflate(0, 3000, 300);                                          // ballooned: [3000, 3300)
        vm.WorkingSet = (0, 512);                                               // owed: the working set
        vm.PagesPerSecond = 100_000;
        vm.Start();
        // The guest reads every class but the working set; never-touched: [8192, 16384).
        var reads = Pages(0, 1000, 100).Concat(Pages(0, 2000, 200)).Concat(Pages(0, 3000, 300)).Concat(Pages(0, 8192, 8192)).ToList();
        using var destination = new Destination(vm, 1, []);
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        using var migration = PostcopyAfterPass1(vm, Switching(2) with { HintBudgetMs = 2000 }, 0);
        var local = new List<string>();
        var checkedLocally = 0L;
        Task? reading = null;
        // Every one of these pages is zero on the destination: never sent (untouched, ballooned, hinted free) or sent as a zero run.
        destination.Target.GuestResumed += () => reading = Task.Run(() =>
        {
            var page = new byte[4096];
            foreach (var (block, p) in reads)
            {
                if (!destination.Memory.Read(0, block, p, page, TimeSpan.FromSeconds(10)))
                    local.Add($"page {p} waited");
                else if (page.AsSpan().ContainsAnyExcept((byte)0))
                    local.Add($"page {p} is not zero");
                checkedLocally++;
            }
        });

        var stats = migration.Run(channels);
        var report = destination.Receiving!.GetAwaiter().GetResult();
        reading!.GetAwaiter().GetResult();

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(reads.Count, checkedLocally);
        Assert.Empty(local);
        Assert.Equal(0, destination.Memory.FaultsReported);
        Assert.Equal(0, report.Postcopy!.Requests);
        Assert.Equal(0, stats.Postcopy!.Requests);
        Assert.Equal(200, stats.HintedPages);
        Assert.Equal(300, stats.BalloonedPages);
        // The owed set is the working set at most: no page of the other classes was owed.
        Assert.InRange(stats.Postcopy.OwedPages, 1, 512);
        for (ulong p = 512; p < 16384; p++)
            Assert.True(destination.Memory.PlacedAt(0, p) < 0, $"page {p} was placed by postcopy");
        AssertNoViolations(destination);
    }

    [Fact]
    public void Urgent_pages_overtake_the_background_stream()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 1024, 200_000);
        DirtyAtEverySync(vm, 1024);
        using var destination = new Destination(vm, 1, []);
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        // One bulk channel at 1 MiB/s: the background brings 256 pages a second, in order.
        using var migration = PostcopyAfterPass1(vm, Switching(1), (long)MiB);
        // Right after the switch the guest needs the last pages of the owed set, which the background would bring last.
        var waited = new List<(ulong Page, int PlacedAt, int PlacedBefore)>();
        // A thread of its own (a vCPU is one): a pool thread may start late when the pool is busy with other tests.
        destination.Target.GuestResumed += () => new Thread(() =>
        {
            var page = new byte[4096];
            for (ulong p = 1016; p < 1024; p++)
            {
                destination.Memory.Read(0, 0, p, page, TimeSpan.FromSeconds(30));
                lock (waited)
                    waited.Add((p, destination.Memory.PlacedAt(0, p), destination.Memory.PlacedCount));
            }
            // Measured: let the rest go at full speed.
            migration.SetMaxBandwidth(0);
        }) { IsBackground = true, Name = "urgent-reader" }.Start();

        var stats = migration.Run(channels);
        destination.Receiving!.GetAwaiter().GetResult();

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        var owed = stats.Postcopy!.OwedPages;
        Assert.True(owed >= 900, $"{owed} pages owed");
        Assert.Equal(8, waited.Count);
        // Each was placed while most of the background stream was still to come: its queue position is near the
        // front, where the background order would have put it last.
        Assert.All(waited, w => Assert.True(w.PlacedAt >= 0 && w.PlacedAt < owed / 2, $"page {w.Page} placed {w.PlacedAt}th of {owed}; {stats.Postcopy}"));
        Assert.True(stats.Postcopy.UrgentPages >= 1);
        Assert.True(stats.Postcopy.Requests >= 1);
        AssertNoViolations(destination);
        PrecopyEngineTests.AssertSameMemory(vm, destination.Target);
    }

    [Fact]
    public void A_fault_taken_before_the_first_connection_is_up_is_asked_for_once_it_is()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 1024, 200_000);
        DirtyAtEverySync(vm, 1024);
        using var destination = new Destination(vm, 1, []);
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        using var migration = PostcopyAfterPass1(vm, Switching(1), (long)MiB);
        var placedAt = -1;
        Thread? reader = null;
        // The guest faults on the last owed page the moment it runs, before the receiver has its connection up
        // (the resume comes first). Found by a loaded run: such a fault was never asked for, and its vCPU waited
        // for the whole background stream.
        destination.Target.GuestResumed += () =>
        {
            reader = new Thread(() =>
            {
                var page = new byte[4096];
                destination.Memory.Read(0, 0, 1023, page, TimeSpan.FromSeconds(30));
                placedAt = destination.Memory.PlacedAt(0, 1023);
                migration.SetMaxBandwidth(0);
            }) { IsBackground = true, Name = "early-fault" };
            reader.Start();
            WaitUntil(() => Interlocked.Read(ref destination.Memory.FaultsReported) >= 1, "the fault");
            Thread.Sleep(100); // the receiver's fault thread takes it now, with no connection to ask on yet
        };

        var stats = migration.Run(channels);
        destination.Receiving!.GetAwaiter().GetResult();
        Assert.True(reader!.Join(TimeSpan.FromSeconds(30)));

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.True(placedAt >= 0 && placedAt < (int)stats.Postcopy!.OwedPages / 2, $"page 1023 placed {placedAt}th of {stats.Postcopy!.OwedPages}");
        Assert.Equal(1, stats.Postcopy.Requests);
        AssertNoViolations(destination);
        PrecopyEngineTests.AssertSameMemory(vm, destination.Target);
    }

    [Fact]
    public void A_destination_that_dies_after_the_switch_leaves_the_source_paused_with_its_memory()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 512, 100_000);
        var resumed = 0;
        vm.Resuming += () => Interlocked.Increment(ref resumed);
        using var destination = new Destination(vm, 1, []);
        var destinationEnds = new List<System.IO.Stream>();
        var channels = new InMemoryChannels();
        var listener = new RecordingListener(channels, destinationEnds);
        destination.Receive(listener);
        using var migration = PostcopyAfterPass1(vm, Switching(2), (long)MiB);
        var running = Task.Run(() => migration.Run(channels));
        WaitUntil(() => destination.Incoming.Status == MigrationStatus.PostcopyActive, "the switch");
        var atPause = vm.Blocks[0].Mapping.GetSpan(0, (int)(16 * MiB)).ToArray();

        // The destination process dies: its kernel closes every connection.
        lock (destinationEnds)
        {
            foreach (var end in destinationEnds)
                end.Dispose();
        }
        destination.Cancel.Cancel();
        WaitUntil(() => migration.Status == MigrationStatus.PostcopyPaused, "the source to pause");
        Thread.Sleep(300);

        Assert.Equal(MigrationStatus.PostcopyPaused, migration.Status);
        Assert.True(vm.IsPaused);
        Assert.Equal(0, resumed);
        Assert.True(atPause.AsSpan().SequenceEqual(vm.Blocks[0].Mapping.GetSpan(0, (int)(16 * MiB))), "the source's memory changed while paused");
        Assert.Contains("destination", migration.Snapshot().Postcopy!.PausedBecause!, StringComparison.Ordinal);

        // Giving up the paused migration leaves the guest paused and says the destination may run it.
        migration.Cancel();
        var failure = Assert.Throws<MigrationException>(() => running.GetAwaiter().GetResult());
        Assert.True(failure.DestinationMayBeRunning);
        Assert.Equal(MigrationStatus.Failed, migration.Status);
        Assert.True(migration.Snapshot().DestinationMayBeRunning);
        Assert.True(vm.IsPaused);
        Assert.Equal(0, resumed);
    }

    [Fact]
    public void A_source_that_dies_after_the_switch_is_an_unrecoverable_failure_on_the_destination()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 512, 100_000);
        using var destination = new Destination(vm, 1, []);
        var killer = new SourceKiller();
        var channels = new InMemoryChannels(killer.Wrap);
        destination.Receive(channels);
        using var migration = PostcopyAfterPass1(vm, Switching(2), (long)MiB);
        var running = Task.Run(() => migration.Run(channels));
        WaitUntil(() => destination.Incoming.Status == MigrationStatus.PostcopyActive, "the switch");

        killer.Kill();

        var failure = Assert.Throws<MigrationException>(() => destination.Receiving!.GetAwaiter().GetResult());
        Assert.Contains("source closed its connections", failure.Message, StringComparison.Ordinal);
        Assert.Contains("cannot continue", failure.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationStatus.Failed, destination.Incoming.Status);
        Assert.DoesNotContain("Exception", failure.Message, StringComparison.Ordinal);
        // The source (still alive in this test) paused; give it up.
        WaitUntil(() => migration.Status == MigrationStatus.PostcopyPaused, "the source to pause");
        migration.Cancel();
        Assert.Throws<MigrationException>(() => running.GetAwaiter().GetResult());
        destination.Guest.Stop();
    }

    [Fact]
    public void Memory_that_cannot_place_a_page_after_the_switch_fails_the_destination_instead_of_pausing()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 512, 100_000);
        DirtyAtEverySync(vm, 512);
        using var destination = new Destination(vm, 1, []);
        destination.Target.Postcopy = new RefusingMemory(destination.Memory, placementsBeforeFailure: 3);
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        using var migration = PostcopyAfterPass1(vm, Switching(1), (long)MiB);
        var running = Task.Run(() => migration.Run(channels));

        var failure = Assert.Throws<MigrationException>(() => destination.Receiving!.GetAwaiter().GetResult());
        Assert.Contains("could not place the guest's memory", failure.Message, StringComparison.Ordinal);
        Assert.Contains("UFFDIO_COPY: out of memory", failure.Message, StringComparison.Ordinal);
        Assert.Equal(MigrationStatus.Failed, destination.Incoming.Status); // not postcopy-paused: no recovery can help
        // The source lost its destination after the switch: it stays paused with its memory until it is given up.
        WaitUntil(() => migration.Status == MigrationStatus.PostcopyPaused, "the source to pause");
        migration.Cancel();
        Assert.Throws<MigrationException>(() => running.GetAwaiter().GetResult());
    }

    /// <summary>Postcopy memory whose placements fail after a few (as UFFDIO_COPY does when the host is out of memory).</summary>
    private sealed class RefusingMemory(SyntheticPostcopyMemory inner, int placementsBeforeFailure) : IPostcopyMemory
    {
        private int _placements;

        public int VcpuCount => inner.VcpuCount;

        public void MarkOwed(int block, PageSet owed) => inner.MarkOwed(block, owed);

        public void Place(int block, ulong firstPage, ReadOnlySpan<byte> pages)
        {
            Refuse();
            inner.Place(block, firstPage, pages);
        }

        public void PlaceZero(int block, ulong firstPage, ulong count)
        {
            Refuse();
            inner.PlaceZero(block, firstPage, count);
        }

        private void Refuse()
        {
            if (Interlocked.Increment(ref _placements) > placementsBeforeFailure)
                throw new IOException("UFFDIO_COPY: out of memory");
        }

        public bool TryTakeFault(TimeSpan timeout, out PostcopyFault fault) => inner.TryTakeFault(timeout, out fault);

        public void Complete() => inner.Complete();
    }

    [Fact]
    public void A_request_for_a_page_outside_the_block_is_refused_by_the_source()
    {
        using var vm = WritingGuest(16 * MiB, 1024, 512, 100_000);
        DirtyAtEverySync(vm, 512);
        // Pages at the end of the working set: the background stream (1 MiB/s, in page order) reaches them only after
        // about two seconds, so the guest faults on them and asks even when its threads start late.
        using var destination = new Destination(vm, 1, Pages(0, 496, 16));
        var channels = new InMemoryChannels();
        destination.Receive(new RequestForger(channels));
        using var migration = PostcopyAfterPass1(vm, Switching(1), (long)MiB);
        var running = Task.Run(() => migration.Run(channels));

        WaitUntil(() => migration.Status == MigrationStatus.PostcopyPaused, "the source to refuse the request");
        var why = migration.Snapshot().Postcopy!.PausedBecause!;
        Assert.Contains("page 1000000000", why, StringComparison.Ordinal);
        Assert.Contains("ram-low", why, StringComparison.Ordinal);
        Assert.True(vm.IsPaused);
        migration.Cancel();
        Assert.Throws<MigrationException>(() => running.GetAwaiter().GetResult());
        destination.Cancel.Cancel();
        Assert.ThrowsAny<Exception>(() => destination.Receiving!.GetAwaiter().GetResult());
    }

    [Fact]
    public void A_second_switch_after_the_guest_runs_pauses_the_destination_and_names_it()
    {
        using var source = new SyntheticVm(2 * MiB);
        using var destination = new Destination(source, 1, []);
        var channels = new InMemoryChannels();
        destination.Receive(channels);
        var blocks = new[] { new BlockDescriptor("ram-low", 2 * MiB) };

        var control = channels.ConnectAsync(CancellationToken.None).GetAwaiter().GetResult();
        var writer = new RecordWriter(control);
        writer.WriteHeader(new StreamHeader((ulong)(StreamCapabilities.All & ~StreamCapabilities.Verify), 1, blocks, 42));
        writer.Flush();
        Assert.Equal(ReplyType.Accept, ReturnPath.Read(control).Type);
        var urgent = channels.ConnectAsync(CancellationToken.None).GetAwaiter().GetResult();
        urgent.Write(ChannelHello.Encode(42, ChannelHello.UrgentChannel));
        var owed = new PageSet(512);
        owed.AddRange(0, 10);
        writer.WriteOwedPages(0, 0, owed.Bytes);
        writer.WriteState(StateKind.Machine, 0, "synthetic", BitConverter.GetBytes(1L));
        writer.WritePostcopyStart(10);
        writer.Flush();
        WaitUntil(() => destination.Incoming.Status == MigrationStatus.PostcopyActive, "the switch");
        writer.WritePostcopyStart(10);
        writer.Flush();

        WaitUntil(() => destination.Incoming.Status == MigrationStatus.PostcopyPaused, "the destination to refuse the second switch");
        Assert.Contains("second switch", destination.Incoming.PausedBecause!, StringComparison.Ordinal);
        Assert.True(destination.Target.Resumed);
        destination.Cancel.Cancel();
        var failure = Assert.Throws<MigrationException>(() => destination.Receiving!.GetAwaiter().GetResult());
        Assert.Contains("10 pages", failure.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_destination_without_postcopy_memory_is_refused_at_setup_and_the_source_runs_on()
    {
        using var vm = WritingGuest(16 * MiB, 100, 50, 1000);
        using var target = new SyntheticTarget(vm.Blocks);
        var channels = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, channels, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 1 }, Postcopy);

        var failure = Assert.Throws<MigrationException>(() => migration.Run(channels));

        Assert.Equal(MigrationErrorKind.DestinationRefused, failure.Kind);
        Assert.Contains("postcopy", failure.Message, StringComparison.Ordinal);
        Assert.False(vm.IsPaused);
        Assert.ThrowsAny<Exception>(() => receive.GetAwaiter().GetResult());
    }

    [Fact]
    public void Start_postcopy_needs_the_capability()
    {
        using var vm = new SyntheticVm(2 * MiB);
        using var migration = new PrecopyMigration(vm, new MigrationParameters(), new MigrationCapabilities());
        var e = Assert.Throws<InvalidOperationException>(migration.StartPostcopy);
        Assert.Contains("postcopy-ram", e.Message, StringComparison.Ordinal);
        Assert.Throws<InvalidOperationException>(() => migration.ResumePostcopy(new InMemoryChannels()));
    }

    /// <summary>A listener that remembers the destination's ends of every connection (to "kill" the destination).</summary>
    private sealed class RecordingListener(InMemoryChannels inner, List<System.IO.Stream> ends) : IChannelListener
    {
        public string Description => inner.Description;

        public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
        {
            var stream = await inner.AcceptAsync(cancel).ConfigureAwait(false);
            lock (ends)
                ends.Add(stream);
            return stream;
        }

        public void Dispose() => inner.Dispose();
    }

    /// <summary>
    /// The source's ends of every connection, as a process that can die: <see cref="Kill"/> closes them all at once
    /// (an orderly end of stream, as the kernel gives a dead process's sockets), and after it the engine's own calls
    /// change nothing more.
    /// </summary>
    private sealed class SourceKiller
    {
        private readonly List<System.IO.Stream> _inner = [];
        private volatile bool _dead;

        public System.IO.Stream Wrap(System.IO.Stream inner)
        {
            lock (_inner)
                _inner.Add(inner);
            return new Mortal(this, inner);
        }

        public void Kill()
        {
            _dead = true;
            lock (_inner)
            {
                foreach (var stream in _inner)
                    stream.Dispose();
            }
        }

        private sealed class Mortal(SourceKiller owner, System.IO.Stream inner) : PassThroughStream(inner)
        {
            public override int Read(Span<byte> buffer) => owner._dead ? throw new IOException("dead") : Inner.Read(buffer);

            public override void Write(ReadOnlySpan<byte> buffer)
            {
                if (owner._dead)
                    throw new IOException("dead");
                Inner.Write(buffer);
            }

            protected override void Dispose(bool disposing)
            {
                if (!owner._dead)
                    base.Dispose(disposing);
            }
        }
    }

    /// <summary>A destination whose first page request names page 1,000,000,000 (its checksum recomputed): hostile input for the source.</summary>
    private sealed class RequestForger(InMemoryChannels inner) : IChannelListener
    {
        private int _forged;

        public string Description => inner.Description;

        public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel) => new Forging(this, await inner.AcceptAsync(cancel).ConfigureAwait(false));

        public void Dispose() => inner.Dispose();

        private sealed class Forging(RequestForger owner, System.IO.Stream inner) : PassThroughStream(inner)
        {
            public override void Write(ReadOnlySpan<byte> buffer)
            {
                if (buffer.Length == 12 + 16 && (ReplyType)BinaryPrimitives.ReadUInt16LittleEndian(buffer) == ReplyType.PageRequest
                    && Interlocked.Exchange(ref owner._forged, 1) == 0)
                {
                    var frame = buffer.ToArray();
                    BinaryPrimitives.WriteUInt64LittleEndian(frame.AsSpan(12 + 8), 1_000_000_000);
                    BinaryPrimitives.WriteUInt32LittleEndian(frame.AsSpan(8), Crc32C.Append(Crc32C.Compute(frame.AsSpan(0, 8)), frame.AsSpan(12)));
                    Inner.Write(frame);
                    return;
                }
                Inner.Write(buffer);
            }
        }
    }
}
