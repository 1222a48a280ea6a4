using System.Buffers.Binary;
using System.Numerics;
using System.Runtime.InteropServices;

namespace Ferry.Kvm;

/// <summary>
/// A set of pages of one RAM block, one bit per page: bit p%64 of word p/64 is page p, which on this
/// (little-endian) host is also bit p%8 of byte p/8, the layout KVM's dirty log, the balloon's bitmaps, the
/// migration stream and the snapshot file all use. It is the one page-bitmap type: the dirty log, the VMM's own
/// writes, the balloon, free page hints, the pages a pass still has to send and the pages a file holds are all
/// page sets.
/// <para>
/// Every update is atomic per word (<see cref="Interlocked"/>), so threads adding or removing different pages of
/// the same word never lose each other's bits: a vCPU thread dropping hinted pages while a sender takes words out
/// of the same set is the case this exists for. Reads are plain: a set read while others change it gives each
/// word as it was at some moment. Bits past <see cref="PageCount"/> are always clear.
/// </para>
/// </summary>
public sealed class PageSet
{
    private readonly ulong[] _words;

    static PageSet()
    {
        // The word layout equals the byte layout of the wire and the file only on a little-endian host.
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("page sets assume a little-endian host");
    }

    public PageSet(ulong pageCount)
    {
        PageCount = pageCount;
        _words = new ulong[WordsFor(pageCount)];
    }

    /// <summary>Pages the set can hold (the block's page count).</summary>
    public ulong PageCount { get; }

    /// <summary>Words needed for <paramref name="pageCount"/> pages.</summary>
    public static int WordsFor(ulong pageCount) => checked((int)((pageCount + 63) / 64));

    /// <summary>
    /// The raw words, for code that trades whole words with the kernel (KVM's dirty log) or with the page scanner
    /// (<see cref="TakeWord"/>). Writers must keep bits past <see cref="PageCount"/> clear.
    /// </summary>
    public Span<ulong> Words => _words;

    /// <summary>The set as little-endian bytes (the wire's and the file's bitmap layout), a view, not a copy.</summary>
    public ReadOnlySpan<byte> Bytes => MemoryMarshal.AsBytes(_words.AsSpan());

    /// <summary>The bytes of words [firstWord, firstWord + wordCount), e.g. one chunk's 64 bytes.</summary>
    public ReadOnlySpan<byte> BytesOfWords(int firstWord, int wordCount) => MemoryMarshal.AsBytes(_words.AsSpan(firstWord, wordCount));

    public bool Contains(ulong page) => page < PageCount && (Volatile.Read(ref _words[page >> 6]) & Bit(page)) != 0;

    public void Add(ulong page)
    {
        CheckPage(page);
        Interlocked.Or(ref _words[page >> 6], Bit(page));
    }

    public void Remove(ulong page)
    {
        CheckPage(page);
        Interlocked.And(ref _words[page >> 6], ~Bit(page));
    }

    /// <summary>Adds pages [first, first + count); returns how many were not in the set before.</summary>
    public ulong AddRange(ulong first, ulong count)
    {
        if (count == 0)
            return 0;
        CheckRange(first, count);
        var end = first + count;
        ulong added = 0;
        for (var w = first >> 6; w <= (end - 1) >> 6; w++)
        {
            var mask = Mask(w, first, end);
            var before = Interlocked.Or(ref _words[w], mask);
            added += (ulong)BitOperations.PopCount(mask & ~before);
        }
        return added;
    }

    /// <summary>Removes pages [first, first + count); returns how many were in the set.</summary>
    public ulong RemoveRange(ulong first, ulong count)
    {
        if (count == 0)
            return 0;
        CheckRange(first, count);
        var end = first + count;
        ulong removed = 0;
        for (var w = first >> 6; w <= (end - 1) >> 6; w++)
        {
            var mask = Mask(w, first, end);
            var before = Interlocked.And(ref _words[w], ~mask);
            removed += (ulong)BitOperations.PopCount(before & mask);
        }
        return removed;
    }

    /// <summary>
    /// Removes pages [first, first + count) and calls <paramref name="run"/> for each run of pages that were in the
    /// set, in ascending order; returns how many were.
    /// </summary>
    public ulong RemoveRange<TState>(ulong first, ulong count, ref TState state, RunAction<TState> run)
    {
        if (count == 0)
            return 0;
        CheckRange(first, count);
        var end = first + count;
        ulong removed = 0, runStart = 0, runLength = 0;
        for (var w = first >> 6; w <= (end - 1) >> 6; w++)
        {
            var mask = Mask(w, first, end);
            var was = Interlocked.And(ref _words[w], ~mask) & mask;
            removed += (ulong)BitOperations.PopCount(was);
            // Walk the runs inside this word, joining one that continues from the previous word.
            var position = 0;
            while (position < 64)
            {
                var rest = was >> position;
                if (rest == 0)
                    break;
                position += BitOperations.TrailingZeroCount(rest);
                var ones = Math.Min(BitOperations.TrailingZeroCount(~(was >> position)), 64 - position);
                var page = (w << 6) + (ulong)position;
                if (runLength != 0 && runStart + runLength == page)
                {
                    runLength += (ulong)ones;
                }
                else
                {
                    if (runLength != 0)
                        run(ref state, runStart, runLength);
                    runStart = page;
                    runLength = (ulong)ones;
                }
                position += ones;
            }
        }
        if (runLength != 0)
            run(ref state, runStart, runLength);
        return removed;
    }

    public delegate void RunAction<TState>(ref TState state, ulong firstPage, ulong count);

    /// <summary>Takes word <paramref name="word"/> out of the set atomically: returns its pages and leaves them clear.</summary>
    public ulong TakeWord(int word) => Volatile.Read(ref _words[word]) == 0 ? 0 : Interlocked.Exchange(ref _words[word], 0);

    /// <summary>Every page in the set, in ascending order (allocates: for diagnostics and tests, not hot paths).</summary>
    public IEnumerable<ulong> Pages()
    {
        for (var w = 0; w < _words.Length; w++)
        {
            var word = Volatile.Read(ref _words[w]);
            while (word != 0)
            {
                yield return ((ulong)w << 6) + (ulong)BitOperations.TrailingZeroCount(word);
                word &= word - 1;
            }
        }
    }

    /// <summary>Pages in the set.</summary>
    public ulong Count() => CountBits(_words);

    /// <summary>Empties the set.</summary>
    public void Clear() => Array.Clear(_words);

    /// <summary>A new set holding the same pages (a snapshot of this one as it is now).</summary>
    public PageSet Clone()
    {
        var copy = new PageSet(PageCount);
        copy.CopyFrom(this);
        return copy;
    }

    /// <summary>Makes this set equal to <paramref name="other"/> (same page count).</summary>
    public void CopyFrom(PageSet other)
    {
        CheckSameSize(other);
        other._words.CopyTo(_words, 0);
    }

    /// <summary>
    /// Replaces the set with a little-endian bitmap (a file's or the wire's) of at most <see cref="PageCount"/>
    /// pages from page 0; bits past the block are refused, pages past the bitmap's end are cleared.
    /// </summary>
    public void CopyFrom(ReadOnlySpan<byte> bitmap)
    {
        if ((ulong)bitmap.Length * 8 > (ulong)_words.Length * 64)
            throw new ArgumentException($"a bitmap of {bitmap.Length} bytes is larger than a {PageCount}-page set", nameof(bitmap));
        if (FirstPast(bitmap, PageCount) is var past and >= 0)
            throw new ArgumentException($"the bitmap has page {past} set, past a {PageCount}-page set", nameof(bitmap));
        Clear();
        bitmap.CopyTo(MemoryMarshal.AsBytes(_words.AsSpan()));
    }

    /// <summary>
    /// Replaces whole words from <paramref name="firstPage"/> (a multiple of 64) with a little-endian bitmap of
    /// whole words (a balloon bitmap record): the bitmap is the truth for every page it covers. Bits past the block
    /// are refused.
    /// </summary>
    public void ReplaceWords(ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        if (firstPage % 64 != 0 || bitmap.Length % 8 != 0)
            throw new ArgumentException($"a bitmap covers whole 64-page words (first page {firstPage}, {bitmap.Length} bytes)", nameof(bitmap));
        var words = MemoryMarshal.Cast<byte, ulong>(bitmap);
        var firstWord = firstPage / 64;
        if (firstWord > (ulong)_words.Length || (ulong)words.Length > (ulong)_words.Length - firstWord)
            throw new ArgumentOutOfRangeException(nameof(firstPage), $"a bitmap for pages {firstPage}..{firstPage + (ulong)words.Length * 64 - 1} runs past a {PageCount}-page set");
        if (FirstPast(bitmap, PageCount - firstPage) is var past and >= 0)
            throw new ArgumentOutOfRangeException(nameof(bitmap), $"the bitmap has page {firstPage + (ulong)past} set, past a {PageCount}-page set");
        for (var i = 0; i < words.Length; i++)
            Volatile.Write(ref _words[(int)firstWord + i], words[i]);
    }

    /// <summary>Adds every page in <paramref name="words"/> (KVM's dirty log of the same block), atomically per word.</summary>
    public void UnionWith(ReadOnlySpan<ulong> words)
    {
        if (words.Length > _words.Length)
            throw new ArgumentException($"{words.Length} words are more than a {PageCount}-page set holds", nameof(words));
        for (var i = 0; i < words.Length; i++)
        {
            if (words[i] != 0)
                Interlocked.Or(ref _words[i], words[i]);
        }
        if (words.Length == _words.Length && PageCount % 64 != 0)
            Interlocked.And(ref _words[^1], TailMask(PageCount));
    }

    /// <summary>Moves every page of this set into <paramref name="destination"/> and empties this one, atomically per word.</summary>
    public void DrainInto(PageSet destination)
    {
        CheckSameSize(destination);
        for (var i = 0; i < _words.Length; i++)
        {
            if (Volatile.Read(ref _words[i]) != 0)
                Interlocked.Or(ref destination._words[i], Interlocked.Exchange(ref _words[i], 0));
        }
    }

    /// <summary>Removes every page that is in <paramref name="other"/>; returns how many were removed.</summary>
    public ulong RemoveAll(PageSet other)
    {
        CheckSameSize(other);
        ulong removed = 0;
        for (var i = 0; i < _words.Length; i++)
        {
            var overlap = Volatile.Read(ref _words[i]) & other._words[i];
            if (overlap == 0)
                continue;
            var before = Interlocked.And(ref _words[i], ~overlap);
            removed += (ulong)BitOperations.PopCount(before & overlap);
        }
        return removed;
    }

    /// <summary>Pages in both this set and <paramref name="other"/>.</summary>
    public ulong CountCommon(PageSet other)
    {
        CheckSameSize(other);
        ulong count = 0;
        for (var i = 0; i < _words.Length; i++)
            count += (ulong)BitOperations.PopCount(_words[i] & other._words[i]);
        return count;
    }

    /// <summary>Pages in this set or in <paramref name="other"/>.</summary>
    public ulong CountUnion(PageSet other)
    {
        CheckSameSize(other);
        ulong count = 0;
        for (var i = 0; i < _words.Length; i++)
            count += (ulong)BitOperations.PopCount(_words[i] | other._words[i]);
        return count;
    }

    /// <summary>Whether words [firstWord, firstWord + count) of both sets hold the same pages.</summary>
    public bool WordsEqual(PageSet other, int firstWord, int count)
    {
        CheckSameSize(other);
        return _words.AsSpan(firstWord, count).SequenceEqual(other._words.AsSpan(firstWord, count));
    }

    /// <summary>Copies words [firstWord, firstWord + count) of <paramref name="other"/> into this set.</summary>
    public void CopyWordsFrom(PageSet other, int firstWord, int count)
    {
        CheckSameSize(other);
        other._words.AsSpan(firstWord, count).CopyTo(_words.AsSpan(firstWord, count));
    }

    /// <summary>
    /// The next run of pages in the set at or after <paramref name="position"/> and before <paramref name="end"/>;
    /// false when there is none. Advances <paramref name="position"/> past the run.
    /// </summary>
    public bool NextRun(ref ulong position, ulong end, out ulong start, out ulong length) =>
        NextRun(Bytes, Math.Min(end, PageCount), ref position, out start, out length, set: true);

    /// <summary>The next run of pages not in the set, as <see cref="NextRun"/>.</summary>
    public bool NextGap(ref ulong position, ulong end, out ulong start, out ulong length) =>
        NextRun(Bytes, Math.Min(end, PageCount), ref position, out start, out length, set: false);

    /// <summary>The runs of pages in the set, in ascending order (allocation-free: <c>foreach (var run in set.Runs())</c>).</summary>
    public RunEnumerator Runs() => new(Bytes, 0, PageCount, 0);

    /// <summary>The runs of pages in the set within [first, end).</summary>
    public RunEnumerator Runs(ulong first, ulong end) => new(Bytes, first, Math.Min(end, PageCount), 0);

    /// <summary>
    /// The runs of set bits in a little-endian bitmap that arrived as bytes (from the guest, the wire or a file):
    /// bit i is page <paramref name="firstPage"/> + i.
    /// </summary>
    public static RunEnumerator RunsIn(ReadOnlySpan<byte> bitmap, ulong firstPage) =>
        new(bitmap, 0, (ulong)bitmap.Length * 8, firstPage);

    /// <summary>Pages set in a little-endian bitmap.</summary>
    public static ulong CountIn(ReadOnlySpan<byte> bitmap)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(bitmap);
        var count = CountBits(words);
        foreach (var b in bitmap[(words.Length * 8)..])
            count += (ulong)BitOperations.PopCount(b);
        return count;
    }

    /// <summary>Runs of set bits in a little-endian bitmap (what applying it run by run costs), counted without walking them.</summary>
    public static ulong CountRunsIn(ReadOnlySpan<byte> bitmap)
    {
        var words = MemoryMarshal.Cast<byte, ulong>(bitmap);
        ulong runs = 0, carry = 0;
        foreach (var w in words)
        {
            // A run starts at every set bit whose lower neighbour (the previous word's top bit for bit 0) is clear.
            runs += (ulong)BitOperations.PopCount(w & ~((w << 1) | carry));
            carry = w >> 63;
        }
        foreach (var b in bitmap[(words.Length * 8)..])
        {
            runs += (ulong)BitOperations.PopCount((uint)(b & ~((b << 1) | (int)carry)) & 0xFF);
            carry = (ulong)(b >> 7);
        }
        return runs;
    }

    /// <summary>The first page at or past <paramref name="pageCount"/> set in a little-endian bitmap, or -1 when there is none.</summary>
    public static long FirstPast(ReadOnlySpan<byte> bitmap, ulong pageCount)
    {
        var position = pageCount;
        return NextRun(bitmap, (ulong)bitmap.Length * 8, ref position, out var start, out _, set: true) ? (long)start : -1;
    }

    /// <summary>A run of pages: the first page and how many.</summary>
    public readonly record struct Run(ulong Start, ulong Length)
    {
        public ulong End => Start + Length;
    }

    /// <summary>Enumerates the runs of set bits of a bitmap without allocating.</summary>
    public ref struct RunEnumerator
    {
        private readonly ReadOnlySpan<byte> _bits;
        private readonly ulong _end, _offset;
        private ulong _position;

        internal RunEnumerator(ReadOnlySpan<byte> bits, ulong first, ulong end, ulong offset)
        {
            _bits = bits;
            _position = first;
            _end = end;
            _offset = offset;
            Current = default;
        }

        public Run Current { get; private set; }

        public readonly RunEnumerator GetEnumerator() => this;

        public bool MoveNext()
        {
            if (!NextRun(_bits, _end, ref _position, out var start, out var length, set: true))
                return false;
            Current = new Run(start + _offset, length);
            return true;
        }
    }

    /// <summary>
    /// The next run of set (or clear) bits of <paramref name="bits"/> in [position, end), a word at a time. The
    /// one run finder: every walk over a page set, a received bitmap or a file's bitmap goes through it.
    /// </summary>
    private static bool NextRun(ReadOnlySpan<byte> bits, ulong end, ref ulong position, out ulong start, out ulong length, bool set)
    {
        end = Math.Min(end, (ulong)bits.Length * 8);
        var flip = set ? 0UL : ulong.MaxValue;
        var p = position;
        // Find the first bit of the run.
        while (p < end)
        {
            var rest = (ReadWord(bits, p >> 6) ^ flip) >> (int)(p & 63);
            if (rest != 0)
            {
                p += (ulong)BitOperations.TrailingZeroCount(rest);
                break;
            }
            p = ((p >> 6) + 1) << 6;
        }
        if (p >= end)
        {
            position = Math.Max(position, end);
            start = length = 0;
            return false;
        }
        start = p;
        // Find its end: the first bit of the other kind. Shifting brings in zeros from the top, which look like
        // "other kind" only after the inversion, so a word whose remaining bits are all of the run's kind yields 0.
        while (p < end)
        {
            var other = ~(ReadWord(bits, p >> 6) ^ flip) >> (int)(p & 63);
            if (other != 0)
            {
                p += (ulong)BitOperations.TrailingZeroCount(other);
                break;
            }
            p = ((p >> 6) + 1) << 6;
        }
        p = Math.Min(p, end);
        length = p - start;
        position = p;
        return true;
    }

    /// <summary>Word <paramref name="index"/> of a little-endian bitmap; a partial last word reads as if padded with zeros.</summary>
    private static ulong ReadWord(ReadOnlySpan<byte> bits, ulong index)
    {
        var offset = (int)(index * 8);
        if (offset + 8 <= bits.Length)
            return BinaryPrimitives.ReadUInt64LittleEndian(bits[offset..]);
        ulong word = 0;
        for (var i = offset; i < bits.Length; i++)
            word |= (ulong)bits[i] << ((i - offset) * 8);
        return word;
    }

    private static ulong CountBits(ReadOnlySpan<ulong> words)
    {
        ulong count = 0;
        foreach (var word in words)
            count += (ulong)BitOperations.PopCount(word);
        return count;
    }

    private static ulong Bit(ulong page) => 1UL << (int)(page & 63);

    /// <summary>The valid bits of the last word of a set of <paramref name="pageCount"/> pages.</summary>
    private static ulong TailMask(ulong pageCount) => pageCount % 64 == 0 ? ulong.MaxValue : (1UL << (int)(pageCount % 64)) - 1;

    /// <summary>The bits of word <paramref name="word"/> that fall in [first, end).</summary>
    private static ulong Mask(ulong word, ulong first, ulong end)
    {
        var wordStart = word << 6;
        var lo = first > wordStart ? (int)(first - wordStart) : 0;
        var hi = end < wordStart + 64 ? (int)(end - wordStart) : 64;
        var upper = hi == 64 ? ulong.MaxValue : (1UL << hi) - 1;
        return upper & ~((1UL << lo) - 1);
    }

    private void CheckPage(ulong page)
    {
        if (page >= PageCount)
            throw new ArgumentOutOfRangeException(nameof(page), $"page {page} is past a {PageCount}-page set");
    }

    private void CheckRange(ulong first, ulong count)
    {
        if (first > PageCount || count > PageCount - first)
            throw new ArgumentOutOfRangeException(nameof(count), $"pages {first}..{first + count - 1} run past a {PageCount}-page set");
    }

    private void CheckSameSize(PageSet other)
    {
        if (other.PageCount != PageCount)
            throw new ArgumentException($"a {other.PageCount}-page set does not match a {PageCount}-page set", nameof(other));
    }
}
