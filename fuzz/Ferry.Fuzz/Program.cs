namespace Ferry.Fuzz;

/// <summary>
/// <c>Ferry.Fuzz TARGET</c>: run one harness under afl-fuzz (SharpFuzz's in-process persistent loop: an escaping
/// exception is reported as a crash; bench/fuzz.sh sets it up). <c>Ferry.Fuzz replay TARGET PATH...</c>: run files (or every file of directories) through a harness in
/// process and report the ones that fail. <c>Ferry.Fuzz seeds DIR</c>: write the seed corpora.
/// </summary>
public static class Program
{
    public static int Main(string[] args)
    {
        if (args is ["seeds", var directory])
        {
            Seeds.Write(directory);
            return 0;
        }
        if (args is ["replay", var name, .. var paths] && Targets.All.TryGetValue(name, out var replayed))
            return Replay(replayed, paths);
        if (args is [var target] && Targets.All.TryGetValue(target, out var harness))
        {
            SharpFuzz.Fuzzer.Run(stream =>
            {
                using var buffer = new MemoryStream();
                stream.CopyTo(buffer);
                harness(buffer.ToArray());
            });
            return 0;
        }
        Console.Error.WriteLine($"usage: Ferry.Fuzz TARGET | replay TARGET PATH... | seeds DIR   (targets: {string.Join(", ", Targets.All.Keys)})");
        return 2;
    }

    private static int Replay(Action<byte[]> harness, string[] paths)
    {
        var files = paths.SelectMany(p => Directory.Exists(p) ? Directory.EnumerateFiles(p, "*", SearchOption.AllDirectories) : [p]).Order(StringComparer.Ordinal).ToArray();
        var failed = 0;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        foreach (var file in files)
        {
            try
            {
                harness(File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                failed++;
                Console.WriteLine($"FAIL {file}: {e}");
            }
        }
        Console.WriteLine($"{files.Length} inputs, {failed} failed, {clock.Elapsed.TotalMilliseconds:F0} ms");
        return failed == 0 ? 0 : 1;
    }
}
