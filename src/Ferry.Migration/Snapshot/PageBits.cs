using System.Numerics;

namespace Ferry.Migration.Snapshot;

/// <summary>
/// Page bitmaps as 64-bit words (bit p%64 of word p/64 is page p; on a little-endian host that is also byte p/8,
/// bit p%8 of the file's bitmap). Range updates are atomic per word, so threads writing different pages of the
/// same word never lose each other's bits.
/// </summary>
internal static class PageBits
{
    public static int WordCount(ulong pageCount) => checked((int)((pageCount + 63) / 64));

    /// <summary>The bits of word <paramref name="word"/> that fall in [first, first + count).</summary>
    private static ulong Mask(ulong word, ulong first, ulong end)
    {
        var wordStart = word * 64;
        var lo = first > wordStart ? (int)(first - wordStart) : 0;
        var hi = end < wordStart + 64 ? (int)(end - wordStart) : 64;
        var upper = hi == 64 ? ulong.MaxValue : (1UL << hi) - 1;
        return upper & ~((1UL << lo) - 1);
    }

    /// <summary>Sets pages [first, first + count); returns how many were not set before.</summary>
    public static ulong SetRange(ulong[] words, ulong first, ulong count)
    {
        if (count == 0)
            return 0;
        var end = first + count;
        ulong added = 0;
        for (var w = first / 64; w <= (end - 1) / 64; w++)
        {
            var mask = Mask(w, first, end);
            var before = Interlocked.Or(ref words[w], mask);
            added += (ulong)BitOperations.PopCount(mask & ~before);
        }
        return added;
    }

    /// <summary>Clears pages [first, first + count) without reporting which were set.</summary>
    public static void ClearRange(ulong[] words, ulong first, ulong count)
    {
        if (count == 0)
            return;
        var end = first + count;
        for (var w = first / 64; w <= (end - 1) / 64; w++)
            Interlocked.And(ref words[w], ~Mask(w, first, end));
    }

    /// <summary>
    /// Clears pages [first, first + count) and calls <paramref name="run"/> for each run of pages that were set
    /// (in ascending order); returns how many were set.
    /// </summary>
    public static ulong ClearRange<TState>(ulong[] words, ulong first, ulong count, ref TState state, RunAction<TState> run)
    {
        if (count == 0)
            return 0;
        var end = first + count;
        ulong cleared = 0, runStart = 0, runLength = 0;
        for (var w = first / 64; w <= (end - 1) / 64; w++)
        {
            var mask = Mask(w, first, end);
            var was = Interlocked.And(ref words[w], ~mask) & mask;
            cleared += (ulong)BitOperations.PopCount(was);
            // Walk the runs inside this word, joining one that continues from the previous word.
            var position = 0;
            while (position < 64)
            {
                var rest = was >> position;
                if (rest == 0)
                    break;
                var skip = BitOperations.TrailingZeroCount(rest);
                position += skip;
                var ones = BitOperations.TrailingZeroCount(~(was >> position));
                var ones64 = position + ones > 64 ? 64 - position : ones;
                var page = w * 64 + (ulong)position;
                if (runLength != 0 && runStart + runLength == page)
                {
                    runLength += (ulong)ones64;
                }
                else
                {
                    if (runLength != 0)
                        run(ref state, runStart, runLength);
                    runStart = page;
                    runLength = (ulong)ones64;
                }
                position += ones64;
            }
        }
        if (runLength != 0)
            run(ref state, runStart, runLength);
        return cleared;
    }

    public delegate void RunAction<TState>(ref TState state, ulong firstPage, ulong count);

    /// <summary>
    /// The next run of set pages at or after <paramref name="position"/> and before <paramref name="end"/>:
    /// returns false when there is none. Advances <paramref name="position"/> past the run.
    /// </summary>
    public static bool NextRun(ReadOnlySpan<ulong> words, ref ulong position, ulong end, out ulong start, out ulong length)
    {
        var p = position;
        while (p < end)
        {
            var w = (int)(p >> 6);
            var rest = words[w] >> (int)(p & 63);
            if (rest != 0)
            {
                p += (ulong)BitOperations.TrailingZeroCount(rest);
                break;
            }
            p = ((ulong)w + 1) << 6;
        }
        if (p >= end)
        {
            position = end;
            start = length = 0;
            return false;
        }
        start = p;
        while (p < end)
        {
            var w = (int)(p >> 6);
            // Shifting in zeros from the top makes them look "clear" only if a clear bit exists below them;
            // ~words >> s has zeros on top, so a word whose remaining bits are all set yields 0.
            var clear = ~words[w] >> (int)(p & 63);
            if (clear != 0)
            {
                p += (ulong)BitOperations.TrailingZeroCount(clear);
                break;
            }
            p = ((ulong)w + 1) << 6;
        }
        if (p > end)
            p = end;
        length = p - start;
        position = p;
        return true;
    }

    /// <summary>Set bits at page <paramref name="pageCount"/> or later (past the block), or -1 when there are none.</summary>
    public static long FirstBitPast(ReadOnlySpan<ulong> words, ulong pageCount)
    {
        var firstWord = (int)(pageCount / 64);
        for (var w = firstWord; w < words.Length; w++)
        {
            var invalid = w == firstWord ? ~((1UL << (int)(pageCount % 64)) - 1) : ulong.MaxValue;
            var bad = words[w] & invalid;
            if (bad != 0)
                return (long)w * 64 + BitOperations.TrailingZeroCount(bad);
        }
        return -1;
    }

    public static ulong Count(ReadOnlySpan<ulong> words)
    {
        ulong count = 0;
        foreach (var word in words)
            count += (ulong)BitOperations.PopCount(word);
        return count;
    }
}
