using System.Diagnostics;
using System.Globalization;
using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;
using Microsoft.Win32.SafeHandles;

/// <summary>
/// The cost of checking every page of a snapshot (issue 16), without KVM: a synthetic G GiB file written by
/// <see cref="SnapshotWriter"/> (every page present, pseudo-random contents), then, warm (the file in the page cache),
/// in one run: a plain sequential read of its page area, the same reads on N threads, <see cref="SnapshotFile.VerifyPages"/>
/// on N threads (what a lazy restore does before it maps the file), an eager <see cref="SnapshotFile.LoadInto"/> into
/// memfd RAM blocks on N threads with the time its checks took, and the CRC32C rate alone in memory. Medians of
/// --repeat runs.
/// </summary>
internal static class SnapshotVerifyBench
{
    public static int Run(ulong gib, int threads, int repeat, string directory)
    {
        Directory.CreateDirectory(directory);
        var path = Path.Combine(directory, "verify-bench.snap");
        var size = gib << 30;
        var c = CultureInfo.InvariantCulture;
        Console.WriteLine(string.Create(c, $"snapshot page checks: {gib} GiB file (every page present) in {directory}, {threads} threads, {Environment.ProcessorCount} cores, warm page cache, median of {repeat}"));
        try
        {
            var write = Stopwatch.StartNew();
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
            Console.WriteLine(string.Create(c, $"written in {write.Elapsed.TotalMilliseconds:F0} ms (page checksums included)"));

            using var file = SnapshotFile.Open(path);
            var block = file.Blocks[0];
            double Rate(double ms) => size / (double)(1UL << 30) / (ms / 1000);
            double Median(Func<double> measure)
            {
                var runs = Enumerable.Range(0, repeat).Select(_ => measure()).Order().ToArray();
                return runs[runs.Length / 2];
            }
            using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.ReadWrite);
            ReadPageArea(handle, block, 1); // warm: the whole file in the page cache

            var sequential = Median(() => ReadPageArea(handle, block, 1));
            var parallel = Median(() => ReadPageArea(handle, block, threads));
            var verify = Median(() =>
            {
                var result = file.VerifyPages(threads);
                if (!result.Passed || result.BytesChecked != (long)size)
                    throw new InvalidOperationException($"verify: {result}");
                return result.Milliseconds;
            });
            double loadCheck = 0, loadedCrc = 0;
            var load = Median(() =>
            {
                using var target = RamBlock.Create("ram-low", 0, size, 0);
                var clock = Stopwatch.StartNew();
                var loaded = file.LoadInto([target], threads);
                var ms = clock.Elapsed.TotalMilliseconds;
                loadCheck = loaded.PageCheckMilliseconds;
                // The same CRCs again over the loaded RAM, one thread: what checking memory already in place costs.
                var sums = new uint[Page.ChunkPages];
                loadedCrc = Time(() =>
                {
                    for (ulong at = 0; at < size; at += Page.ChunkSize)
                        Crc32C.ComputeEach(target.Mapping.GetSpan(at, Page.ChunkSize), Page.Size, sums);
                });
                return ms;
            });
            var buffer = new byte[Page.ChunkSize * 4];
            Random.Shared.NextBytes(buffer);
            var crcs = new uint[buffer.Length / Page.Size];
            var interleaved = Median(() => Time(() => { for (var i = 0; i < 64; i++) Crc32C.ComputeEach(buffer, Page.Size, crcs); }));
            var single = Median(() => Time(() => { for (var i = 0; i < 64; i++) for (var p = 0; p < crcs.Length; p++) crcs[p] = Crc32C.Compute(buffer.AsSpan(p * Page.Size, Page.Size)); }));
            double crcGib = 64.0 * buffer.Length / (1UL << 30);

            Console.WriteLine("| what | ms | GiB/s |");
            Console.WriteLine("|---|---|---|");
            Console.WriteLine(string.Create(c, $"| sequential read of the page area, 1 thread, 8 MiB preads (baseline) | {sequential:F0} | {Rate(sequential):F2} |"));
            Console.WriteLine(string.Create(c, $"| the same reads on {threads} threads | {parallel:F0} | {Rate(parallel):F2} |"));
            Console.WriteLine(string.Create(c, $"| VerifyPages: read + CRC32C of every page, {threads} threads (a lazy restore's check) | {verify:F0} | {Rate(verify):F2} |"));
            Console.WriteLine(string.Create(c, $"| LoadInto memfd RAM, {threads} threads, pages checked as loaded (an eager restore's page load) | {load:F0} | {Rate(load):F2} |"));
            Console.WriteLine(string.Create(c, $"|   of which checks (busiest thread, last run) | {loadCheck:F0} | {(loadCheck > 0 ? Rate(loadCheck) : 0):F2} |"));
            Console.WriteLine(string.Create(c, $"| CRC32C of the loaded RAM afterwards, 1 thread (last run) | {loadedCrc:F0} | {Rate(loadedCrc):F2} |"));
            Console.WriteLine(string.Create(c, $"| CRC32C in memory, 1 thread, 4 pages interleaved (ComputeEach) | {interleaved:F0} | {crcGib / (interleaved / 1000):F2} |"));
            Console.WriteLine(string.Create(c, $"| CRC32C in memory, 1 thread, one page at a time (Compute) | {single:F0} | {crcGib / (single / 1000):F2} |"));
            Console.WriteLine(string.Create(c, $"verify / sequential read: {verify / sequential:F2}x the time; verify / parallel read: {verify / parallel:F2}x; eager load checks: {100 * loadCheck / load:F1}% of the load"));
            return 0;
        }
        finally
        {
            File.Delete(path);
        }
    }

    private static double Time(Action action)
    {
        var clock = Stopwatch.StartNew();
        action();
        return clock.Elapsed.TotalMilliseconds;
    }

    /// <summary>Reads the block's page area with 8 MiB preads, split among <paramref name="threads"/> threads in 8 MiB turns.</summary>
    private static double ReadPageArea(SafeFileHandle handle, SnapshotBlock block, int threads)
    {
        const int Piece = 8 << 20;
        var pieces = (long)(block.Size / Piece);
        long next = -1;
        var clock = Stopwatch.StartNew();
        var workers = Enumerable.Range(0, threads).Select(_ => new Thread(() =>
        {
            var buffer = GC.AllocateUninitializedArray<byte>(Piece);
            long piece;
            while ((piece = Interlocked.Increment(ref next)) < pieces)
                RandomAccess.Read(handle, buffer, (long)block.PagesOffset + piece * Piece);
        })).ToArray();
        foreach (var worker in workers)
            worker.Start();
        foreach (var worker in workers)
            worker.Join();
        return clock.Elapsed.TotalMilliseconds;
    }
}
