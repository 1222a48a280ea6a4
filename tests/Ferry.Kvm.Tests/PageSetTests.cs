using Xunit;
using Ferry.Kvm;

namespace Ferry.Kvm.Tests;

public sealed class PageSetTests
{
    /// <summary>A random set and the same pages in a naive model.</summary>
    private static (PageSet Set, SortedSet<ulong> Model) Random(ulong pages, int seed, int adds)
    {
        var random = new Random(seed);
        var set = new PageSet(pages);
        var model = new SortedSet<ulong>();
        for (var i = 0; i < adds; i++)
        {
            var first = (ulong)random.NextInt64((long)pages);
            var count = (ulong)random.NextInt64(1, (long)Math.Min(200, pages - first) + 1);
            var added = set.AddRange(first, count);
            ulong expected = 0;
            for (var p = first; p < first + count; p++)
                expected += model.Add(p) ? 1UL : 0;
            Assert.Equal(expected, added);
        }
        return (set, model);
    }

    private static List<ulong> Expand(List<PageSet.Run> runs) =>
        [.. runs.SelectMany(r => Enumerable.Range(0, (int)r.Length).Select(k => r.Start + (ulong)k))];

    [Fact]
    public void Add_contains_count_and_pages_agree_with_a_naive_model()
    {
        var (set, model) = Random(1000, 42, 60);
        Assert.Equal((ulong)model.Count, set.Count());
        Assert.Equal(model, set.Pages());
        for (ulong p = 0; p < 1000; p++)
            Assert.Equal(model.Contains(p), set.Contains(p));
        Assert.Throws<ArgumentOutOfRangeException>(() => set.Add(1000));
        Assert.Throws<ArgumentOutOfRangeException>(() => set.AddRange(990, 11));
        Assert.False(set.Contains(5000));
    }

    [Fact]
    public void RemoveRange_counts_what_was_there_and_reports_its_runs()
    {
        var (set, model) = Random(3000, 7, 80);
        var runs = new List<PageSet.Run>();
        var removed = set.RemoveRange(100, 2500, ref runs, static (ref List<PageSet.Run> r, ulong first, ulong count) => r.Add(new PageSet.Run(first, count)));
        var expected = model.Where(p => p is >= 100 and < 2600).ToList();
        Assert.Equal((ulong)expected.Count, removed);
        Assert.Equal(expected, Expand(runs));
        for (var r = 1; r < runs.Count; r++)
            Assert.True(runs[r].Start > runs[r - 1].End, "two runs touch: they should have been one");
        Assert.Equal(model.Where(p => p is < 100 or >= 2600), set.Pages());
        Assert.Equal(0UL, set.RemoveRange(100, 2500));
    }

    [Theory]
    [InlineData(1000UL, 0UL, 1000UL)]
    [InlineData(1000UL, 63UL, 130UL)]
    [InlineData(1024UL, 64UL, 1024UL)]
    [InlineData(700UL, 699UL, 700UL)]
    public void Runs_and_gaps_partition_a_range_exactly_and_maximally(ulong pages, ulong first, ulong end)
    {
        for (var seed = 0; seed < 20; seed++)
        {
            var (set, model) = Random(pages, seed, seed * 3);
            var runs = new List<PageSet.Run>();
            foreach (var run in set.Runs(first, end))
                runs.Add(run);
            Assert.Equal(model.Where(p => p >= first && p < end), Expand(runs));
            for (var r = 1; r < runs.Count; r++)
                Assert.True(runs[r].Start > runs[r - 1].End, "two runs touch: they should have been one");

            var gaps = new List<PageSet.Run>();
            var position = first;
            while (set.NextGap(ref position, end, out var start, out var length))
                gaps.Add(new PageSet.Run(start, length));
            Assert.Equal(Enumerable.Range((int)first, (int)(end - first)).Select(p => (ulong)p).Where(p => !model.Contains(p)), Expand(gaps));
        }
    }

    [Fact]
    public void Runs_in_a_byte_bitmap_are_offset_by_the_first_page()
    {
        var random = new Random(7);
        for (var trial = 0; trial < 200; trial++)
        {
            var bitmap = new byte[random.Next(1, 40)];
            random.NextBytes(bitmap);
            for (var i = 0; i < bitmap.Length; i++)
                bitmap[i] &= (byte)random.Next(256); // sparser
            var runs = new List<PageSet.Run>();
            foreach (var run in PageSet.RunsIn(bitmap, 1000))
                runs.Add(run);
            var naive = Enumerable.Range(0, bitmap.Length * 8).Where(b => (bitmap[b / 8] & (1 << (b % 8))) != 0).Select(b => 1000UL + (ulong)b).ToList();
            Assert.Equal(naive, Expand(runs));
            Assert.Equal((ulong)naive.Count, PageSet.CountIn(bitmap));
            for (var r = 1; r < runs.Count; r++)
                Assert.True(runs[r].Start > runs[r - 1].End, "two runs touch: they should have been one");
        }
    }

    [Fact]
    public void Bytes_are_the_little_endian_wire_layout_and_round_trip()
    {
        var set = new PageSet(100);
        set.Add(0);
        set.Add(9);
        set.Add(99);
        Assert.Equal(16, set.Bytes.Length);
        Assert.Equal(0b0000_0001, set.Bytes[0]);
        Assert.Equal(0b0000_0010, set.Bytes[1]);
        Assert.Equal(0b0000_1000, set.Bytes[12]);
        var copy = new PageSet(100);
        copy.CopyFrom(set.Bytes[..13]);
        Assert.Equal(set.Pages(), copy.Pages());
        // A file or the wire naming a page past the block is refused, naming the page.
        var bad = new byte[16];
        bad[12] = 0b0001_0000; // page 100
        Assert.Contains("page 100", Assert.Throws<ArgumentException>(() => copy.CopyFrom(bad)).Message, StringComparison.Ordinal);
        Assert.Equal(100, PageSet.FirstPast(bad, 100));
        Assert.Equal(-1, PageSet.FirstPast(bad, 101));
    }

    [Fact]
    public void Take_word_drain_union_and_set_algebra()
    {
        var set = new PageSet(200);
        set.AddRange(60, 10);
        Assert.Equal(0xF000_0000_0000_0000UL, set.TakeWord(0));
        Assert.Equal(0b11_1111UL, set.TakeWord(1));
        Assert.Equal(0UL, set.Count());

        var source = new PageSet(200);
        source.AddRange(10, 3);
        var destination = new PageSet(200);
        destination.Add(64);
        source.DrainInto(destination);
        Assert.Equal([10UL, 11, 12, 64], destination.Pages());
        Assert.Equal(0UL, source.Count());

        // KVM's log of the same block: bits past the block are dropped.
        destination.UnionWith([0, 0, 0, ulong.MaxValue]);
        Assert.Equal(4UL + 8, destination.Count());

        var balloon = new PageSet(200);
        balloon.AddRange(11, 100);
        Assert.Equal(3UL, destination.CountCommon(balloon));
        Assert.Equal(109UL, destination.CountUnion(balloon));
        Assert.Equal(3UL, destination.RemoveAll(balloon));
        Assert.Equal([10UL, 192, 193, 194, 195, 196, 197, 198, 199], destination.Pages());
    }

    [Fact]
    public void Concurrent_adders_and_removers_of_one_word_lose_no_bits()
    {
        var set = new PageSet(64 * 1024);
        Parallel.For(0, 4, t =>
        {
            for (ulong p = (ulong)t; p < 64 * 1024; p += 4)
                set.Add(p);
        });
        Assert.Equal(64UL * 1024, set.Count());
        Parallel.For(0, 4, t =>
        {
            for (ulong p = (ulong)t; p < 64 * 1024; p += 8)
                set.RemoveRange(p, 1);
        });
        Assert.Equal(32UL * 1024, set.Count());
    }

    [Fact]
    public void Page_covering_rounds_a_byte_range_out_to_whole_pages()
    {
        Assert.Equal((0UL, 0UL), Page.Covering(0, 0));
        Assert.Equal((0UL, 1UL), Page.Covering(0, 1));
        Assert.Equal((0UL, 2UL), Page.Covering(4095, 2));
        Assert.Equal((1UL, 1UL), Page.Covering(4096, 4096));
        Assert.Equal(512UL, Page.PagesFor((ulong)Page.ChunkSize));
        Assert.Equal(2UL, Page.ChunksFor(513));
    }
}
