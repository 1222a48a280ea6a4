using Xunit;

namespace Ferry.Interop.Tests;

public sealed class MappedRegionTests
{
    [Fact]
    public void Accessors_reject_ranges_outside_the_mapping()
    {
        using var region = MappedRegion.MapAnonymous(8192);
        region.GetSpan(4096, 4096).Fill(7);
        Assert.Equal(7, region.GetSpan(8191, 1)[0]);
        Assert.Throws<ArgumentOutOfRangeException>(() => region.GetSpan(4097, 4096));
        Assert.Throws<ArgumentOutOfRangeException>(() => region.GetSpan(ulong.MaxValue, 1));
    }

    [Fact]
    public void Dispose_unmaps_once_and_later_access_throws()
    {
        var region = MappedRegion.MapAnonymous(4096);
        region.Dispose();
        region.Dispose();
        Assert.True(region.IsDisposed);
        Assert.Throws<ObjectDisposedException>(() => region.GetSpan(0, 1));
    }

    [Fact]
    public void A_failed_call_reports_the_call_and_errno()
    {
        var e = Assert.Throws<ErrnoException>(() => SafeFd.FromResult(Libc.Open("/nonexistent/ferry", Libc.O_RDONLY, 0), "open"));
        Assert.Equal(Libc.ENOENT, e.Errno);
        Assert.Contains("open failed", e.Message, StringComparison.Ordinal);
    }
}
