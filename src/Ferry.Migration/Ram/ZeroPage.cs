using Ferry.Kvm;

namespace Ferry.Migration.Ram;

/// <summary>
/// Whether a 4 KiB page is all zeros: zero pages travel as zero runs and are never written to a snapshot. The BCL's
/// vectorized scan is used as is: a hand-written AVX2 OR-fold measured 1.46x slower (63 ns against 43 ns per page,
/// bench/Ferry.Benchmarks ZeroPageBenchmarks, 2026-11-22).
/// </summary>
public static class ZeroPage
{
    public static bool IsZero(ReadOnlySpan<byte> page)
    {
        if (page.Length != Page.Size)
            throw new ArgumentException($"a page is {Page.Size} bytes, not {page.Length}", nameof(page));
        return !page.ContainsAnyExcept((byte)0);
    }
}
