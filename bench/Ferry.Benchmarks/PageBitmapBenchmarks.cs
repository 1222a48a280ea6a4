using BenchmarkDotNet.Attributes;
using Ferry.Kvm;

namespace Ferry.Benchmarks;

/// <summary>
/// The bitmap work a dirty-log sync and a migration pass do on an 8 GiB guest (2 Mi pages): merging the VMM's
/// bitmap into the KVM log, counting, and walking the set pages. Baseline: a plain word-wise OR of two arrays.
/// </summary>
[MemoryDiagnoser]
public class PageBitmapBenchmarks
{
    private const ulong Pages = 8UL << 30 >> 12;
    private PageBitmap _bitmap = null!;
    private ulong[] _destination = null!;
    private ulong[] _other = null!;

    [Params(1, 50)]
    public int PercentDirty { get; set; }

    [GlobalSetup]
    public void Setup()
    {
        _bitmap = new PageBitmap(Pages);
        var random = new Random(1);
        for (ulong p = 0; p < Pages; p++)
        {
            if (random.Next(100) < PercentDirty)
                _bitmap.Set(p);
        }
        _destination = new ulong[_bitmap.Words.Length];
        _other = _bitmap.Words.ToArray();
    }

    [Benchmark(Baseline = true)]
    public void PlainOr()
    {
        var d = _destination;
        var o = _other;
        for (var i = 0; i < d.Length; i++)
            d[i] |= o[i];
    }

    [Benchmark]
    public ulong CountSet() => _bitmap.CountSet();

    [Benchmark]
    public ulong EnumerateSet()
    {
        ulong sum = 0;
        foreach (var page in _bitmap.EnumerateSet())
            sum += page;
        return sum;
    }
}
