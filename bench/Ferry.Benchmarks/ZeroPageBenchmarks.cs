using Ferry.Kvm;
using BenchmarkDotNet.Attributes;
using Ferry.Migration.Ram;

namespace Ferry.Benchmarks;

/// <summary>Zero-page detection over 1024 pages (4 MiB), all zero (the common case on a first pass), against the BCL scan.</summary>
[MemoryDiagnoser]
public class ZeroPageBenchmarks
{
    private const int Pages = 1024;
    private byte[] _memory = null!;

    [GlobalSetup]
    public void Setup() => _memory = new byte[Pages * Page.Size];

    [Benchmark(Baseline = true, OperationsPerInvoke = Pages)]
    public int BclContainsAnyExcept()
    {
        var zero = 0;
        for (var p = 0; p < Pages; p++)
        {
            if (!_memory.AsSpan(p * Page.Size, Page.Size).ContainsAnyExcept((byte)0))
                zero++;
        }
        return zero;
    }

    [Benchmark(OperationsPerInvoke = Pages)]
    public int FerryIsZero()
    {
        var zero = 0;
        for (var p = 0; p < Pages; p++)
        {
            if (ZeroPage.IsZero(_memory.AsSpan(p * Page.Size, Page.Size)))
                zero++;
        }
        return zero;
    }
}
