using System.Diagnostics;
using System.Globalization;
using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;

/// <summary>
/// Lazy restore against eager restore (issue 14, item 2), the host side without KVM: a synthetic G GiB snapshot
/// (every page present, pseudo-random contents) restored into fresh RAM blocks, warm page cache, in one run:
/// <list type="bullet">
/// <item>eager: <see cref="SnapshotFile.LoadInto"/> on N threads (every page read and checked before anything runs);</item>
/// <item>lazy: <see cref="SnapshotFile.PageInto"/> (the demand pager: faults and a background fill, each page checked):
/// the time until it returns (when a guest could run), and until the background fill has every page in place;</item>
/// <item>a reader standing in for the guest's first `verify`: one thread reading every page in order from inside a
/// system call (as KVM reads guest memory for a vCPU: a page not yet in place blocks it in the kernel), timed after
/// the eager load and from the start of the lazy one, racing the fill; its faults' latency from the pager.</item>
/// </list>
/// The targets: time to running within 20 ms at any size; the reader at most 1.5x its time after an eager
/// load; the whole file read once, in the background, within 1.2x the eager load. Under KVM a vCPU's own faults
/// (a shadow-MMU fault per 4 KiB mapping until a piece is collapsed) come on top: bench/snapshot.sh measures those.
/// Medians of --repeat, eager and lazy alternating.
/// </summary>
internal static unsafe class LazyRestoreBench
{
    public static int Run(ulong gib, int threads, int repeat, string directory, RamBackend backend)
    {
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, "lazy-bench.snap");
        var size = gib << 30;
        var c = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(c, $"lazy against eager restore: {gib} GiB snapshot (every page present) in {directory}, {backend} RAM, eager on {threads} threads, {Environment.ProcessorCount} cores, warm page cache, median of {repeat}"));
        try
        {
            using (var writer = SnapshotWriter.Create(path, [new BlockDescriptor("ram-low", size)]))
            {
                var chunk = new byte[Page.ChunkSize];
                for (ulong page = 0; page < size / Page.Size; page += Page.ChunkPages)
                {
                    Random.Shared.NextBytes(chunk);
                    writer.WritePages(0, page, chunk);
                }
                writer.Finish([]);
            }
            using (var warm = File.OpenRead(path))
                warm.CopyTo(Stream.Null);

            var eager = new List<(double Load, double Reader)>();
            var lazy = new List<(double Running, double Reader, double Filled, DemandPagingStatistics Stats)>();
            var alone = new List<double>();
            for (var i = 0; i < repeat; i++)
            {
                eager.Add(Eager(path, size, threads, backend));
                lazy.Add(Lazy(path, size, backend, read: true));
                alone.Add(Lazy(path, size, backend, read: false).Filled);
            }
            static double Median(IEnumerable<double> values)
            {
                var sorted = values.Order().ToArray();
                return sorted[sorted.Length / 2];
            }
            var eagerLoad = Median(eager.Select(e => e.Load));
            var eagerReader = Median(eager.Select(e => e.Reader));
            var running = Median(lazy.Select(l => l.Running));
            var lazyReader = Median(lazy.Select(l => l.Reader));
            var filled = Median(lazy.Select(l => l.Filled));
            var filledAlone = Median(alone);
            var stats = lazy.OrderBy(l => l.Filled).ElementAt(lazy.Count / 2).Stats;
            double Rate(double ms) => gib / (ms / 1000);
            Console.WriteLine("| what | ms | GiB/s | target |");
            Console.WriteLine("|---|---|---|---|");
            Console.WriteLine(string.Create(c, $"| eager: LoadInto, {threads} threads (baseline) | {eagerLoad:F0} | {Rate(eagerLoad):F2} | |"));
            Console.WriteLine(string.Create(c, $"| eager: then the reader over every page | {eagerReader:F0} | {Rate(eagerReader):F2} | |"));
            Console.WriteLine(string.Create(c, $"| lazy: PageInto returns (the guest could run) | {running:F1} | | at most 20 ms |"));
            Console.WriteLine(string.Create(c, $"| lazy: the reader from the start, racing the fill | {lazyReader:F0} | {Rate(lazyReader):F2} | {lazyReader / eagerReader:F2}x eager's reader (at most 1.5x) |"));
            Console.WriteLine(string.Create(c, $"| lazy: every page in place (faults + background fill) | {filled:F0} | {Rate(filled):F2} | {filled / eagerLoad:F2}x the eager load (at most 1.2x) |"));
            Console.WriteLine(string.Create(c, $"| lazy, nothing touching the memory: every page in place (the fill alone) | {filledAlone:F0} | {Rate(filledAlone):F2} | {filledAlone / eagerLoad:F2}x the eager load |"));
            Console.WriteLine(string.Create(c, $"lazy, median run: {stats.Faults} faults, fault latency p50 {stats.FaultLatencyP50Us:F0} µs, p99 {stats.FaultLatencyP99Us:F0} µs, max {stats.FaultLatencyMaxUs:F0} µs; pages by faults {stats.PagesFetchedByFaults}, by the fill {stats.PagesFetchedByFill}; pieces made huge pages {stats.PiecesMadeHuge} of {Page.ChunksFor(size / Page.Size)} ({stats.PiecesMoved} moved in whole, {stats.PiecesCollapsed} collapsed)"));
            return 0;
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static (double Load, double Reader) Eager(string path, ulong size, int threads, RamBackend backend)
    {
        using var block = RamBlock.Create("ram-low", 0, size, 0, backend);
        using var file = SnapshotFile.Open(path);
        var clock = Stopwatch.StartNew();
        file.LoadInto([block], threads);
        var load = clock.Elapsed.TotalMilliseconds;
        return (load, ReadEveryPage(block));
    }

    private static (double Running, double Reader, double Filled, DemandPagingStatistics Stats) Lazy(string path, ulong size, RamBackend backend, bool read)
    {
        using var block = RamBlock.Create("ram-low", 0, size, 0, backend);
        var clock = Stopwatch.StartNew();
        using (var file = SnapshotFile.Open(path))
            file.PageInto([block]);
        var running = clock.Elapsed.TotalMilliseconds;
        var reader = read ? ReadEveryPage(block) : 0;
        var pager = block.Pager!;
        if (!pager.Completion.Wait(TimeSpan.FromMinutes(10)))
            throw new TimeoutException("the lazy restore's fill did not complete");
        var filled = running + pager.Statistics().FillMs;
        return (running, running + reader, filled, pager.Statistics());
    }

    /// <summary>
    /// Reads every page of the block in order, 64 KiB at a time, from inside a system call (pwrite from guest memory
    /// into a scratch memfd): a page not in place blocks the read in the kernel, as a vCPU waits inside KVM_RUN (a
    /// managed thread must not wait in a plain page fault, see DemandPager). Returns the milliseconds it took.
    /// </summary>
    private static double ReadEveryPage(RamBlock block)
    {
        const int Piece = 64 << 10;
        using var scratch = SafeFd.FromResult(Libc.MemfdCreate("lazy-bench-reader", Libc.MFD_CLOEXEC), "memfd_create");
        var clock = Stopwatch.StartNew();
        for (ulong offset = 0; offset < block.Size; offset += Piece)
        {
            var done = 0L;
            while (done < Piece)
            {
                var n = Libc.PWrite(scratch.Fd, (void*)(block.Mapping.Address + (nint)offset + (nint)done), (nuint)(Piece - done), 0);
                if (n < 0)
                {
                    if (Libc.LastErrno == Libc.EINTR)
                        continue;
                    throw new ErrnoException("pwrite(guest memory)", Libc.LastErrno);
                }
                done += n;
            }
        }
        return clock.Elapsed.TotalMilliseconds;
    }
}
