using System.Runtime.InteropServices;

namespace Ferry.Kvm.Tests;

/// <summary>
/// A synthetic page source: each data page holds a pattern derived from its number, and every request is counted
/// per page, so a test can prove which pages were asked for and how often. It can be slowed down (per read, for
/// the fill thread or the fault thread) and made to fail at one page.
/// </summary>
public sealed class PatternSource : IPageSource
{
    private readonly int[] _requests;
    private long _reads;

    public PatternSource(ulong pageCount, Func<ulong, bool> isData, Func<ulong, bool>? isBallooned = null)
    {
        DataPages = new PageSet(pageCount);
        for (ulong p = 0; p < pageCount; p++)
        {
            if (isData(p))
                DataPages.Add(p);
        }
        if (isBallooned is not null)
        {
            BalloonedPages = new PageSet(pageCount);
            for (ulong p = 0; p < pageCount; p++)
            {
                if (!isData(p) && isBallooned(p))
                    BalloonedPages.Add(p);
            }
        }
        _requests = new int[pageCount];
    }

    public string Description => "pattern source";

    public PageSet DataPages { get; }

    public PageSet? BalloonedPages { get; }

    /// <summary>Delay per read on the pager's fill thread.</summary>
    public TimeSpan FillDelay { get; set; }

    /// <summary>Delay per read on the pager's fault thread.</summary>
    public TimeSpan FaultDelay { get; set; }

    /// <summary>A read that includes this page throws (the message says what kind of failure).</summary>
    public ulong? FailAt { get; set; }

    public string FailMessage { get; set; } = "read error";

    /// <summary>Blocks reads until set (for tests that need the pager busy).</summary>
    public ManualResetEventSlim Gate { get; } = new(true);

    public long Reads => Interlocked.Read(ref _reads);

    public int Requests(ulong page) => Volatile.Read(ref _requests[page]);

    public ulong PagesRequested() => (ulong)_requests.Count(r => r > 0);

    public ulong PagesRequestedMoreThanOnce() => (ulong)_requests.Count(r => r > 1);

    public static ulong Word(ulong page, int index) => (page * 0x9E3779B97F4A7C15UL) ^ ((ulong)index * 0xC2B2AE3D27D4EB4FUL) | 1;

    /// <summary>Writes page <paramref name="page"/>'s pattern into <paramref name="into"/> (one page).</summary>
    public static void Pattern(ulong page, Span<byte> into)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(into);
        for (var i = 0; i < words.Length; i++)
            words[i] = Word(page, i);
    }

    public void ReadPages(ulong firstPage, ulong count, Span<byte> into)
    {
        Interlocked.Increment(ref _reads);
        Gate.Wait();
        var name = Thread.CurrentThread.Name ?? "";
        var delay = name.StartsWith("ferry-pager-fill", StringComparison.Ordinal) ? FillDelay : FaultDelay;
        if (delay > TimeSpan.Zero)
            Thread.Sleep(delay);
        for (var i = 0UL; i < count; i++)
        {
            var page = firstPage + i;
            if (!DataPages.Contains(page))
                throw new InvalidOperationException($"the pager asked for page {page}, which the source does not hold");
            Interlocked.Increment(ref _requests[page]);
            if (FailAt == page)
                throw new PageSourceException($"pattern source: {FailMessage} at page {page}", page);
            Pattern(page, into.Slice((int)(i * Page.Size), Page.Size));
        }
    }
}
