using BenchmarkDotNet.Attributes;
using Ferry.Kvm;

namespace Ferry.Benchmarks;

/// <summary>
/// The page-set work a dirty-log sync and a migration pass do on an 8 GiB guest (2 Mi pages): merging KVM's log
/// into the pass's set, counting, and walking the runs of set pages. Baseline: a plain word-wise OR of two arrays.
/// </summary>
[MemoryDiagnoser]
public class PageSetBenchmarks
{
    private const ulong Pages = 8UL << 30 >> Page.Shift;
    private PageSet _set = null!;
    private PageSet _destination = null!;
    private ulong[] _plainDestination = null!;
    private ulong[] _log = null!;

    [Params(1, 50)]
    public int PercentDirty { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _set = new PageSet(Pages);
        var random = new Random(1);
        for (ulong p = 0; p < Pages; p++)
        {
            if (random.Next(100) < PercentDirty)
                _set.Add(p);
        }
        _destination = new PageSet(Pages);
        _plainDestination = new ulong[PageSet.WordsFor(Pages)];
        _log = _set.Words.ToArray();
    }

    [Benchmark(Baseline = true)]
    public void PlainOr()
    {
        var d = _plainDestination;
        var o = _log;
        for (var i = 0; i < d.Length; i++)
            d[i] |= o[i];
    }

    [Benchmark]
    public void UnionWithLog() => _destination.UnionWith(_log);

    [Benchmark]
    public ulong Count() => _set.Count();

    [Benchmark]
    public ulong WalkRuns()
    {
        ulong sum = 0;
        foreach (var run in _set.Runs())
            sum += run.Length;
        return sum;
    }
}
