using System.Numerics;

namespace Ferry.Kvm;

/// <summary>
/// One bit per 4 KiB page, safe for concurrent setters (Interlocked.Or). Used for the VMM's own writes to guest
/// RAM, as the merged result of a dirty-log sync, and as the balloon bitmap (pages given back to the host).
/// </summary>
public sealed class PageBitmap
{
    private readonly ulong[] _words;

    public PageBitmap(ulong pageCount)
    {
        PageCount = pageCount;
        _words = new ulong[(pageCount + 63) / 64];
    }

    public ulong PageCount { get; }

    /// <summary>The raw words (bit i of word w is page w*64+i). Bits past PageCount are always zero.</summary>
    public Span<ulong> Words => _words;

    public void Set(ulong page)
    {
        if (page >= PageCount)
            throw new ArgumentOutOfRangeException(nameof(page), $"page {page} is past a {PageCount}-page bitmap");
        Interlocked.Or(ref _words[page >> 6], 1UL << (int)(page & 63));
    }

    /// <summary>Marks every page overlapping the byte range [offset, offset + length).</summary>
    public void SetRange(ulong byteOffset, ulong length)
    {
        if (length == 0)
            return;
        var first = byteOffset >> 12;
        var last = (byteOffset + length - 1) >> 12;
        for (var page = first; page <= last; page++)
            Set(page);
    }

    /// <summary>Clears every page overlapping the byte range [offset, offset + length).</summary>
    public void ClearRange(ulong byteOffset, ulong length)
    {
        if (length == 0)
            return;
        var first = byteOffset >> 12;
        var last = (byteOffset + length - 1) >> 12;
        if (last >= PageCount)
            throw new ArgumentOutOfRangeException(nameof(length), $"pages {first}..{last} run past a {PageCount}-page bitmap");
        for (var page = first; page <= last; page++)
            Interlocked.And(ref _words[page >> 6], ~(1UL << (int)(page & 63)));
    }

    public bool Get(ulong page) => page < PageCount && (Volatile.Read(ref _words[page >> 6]) & (1UL << (int)(page & 63))) != 0;

    public ulong CountSet()
    {
        ulong count = 0;
        foreach (var word in _words)
            count += (ulong)BitOperations.PopCount(word);
        return count;
    }

    public void Clear() => Array.Clear(_words);

    /// <summary>ORs this bitmap into <paramref name="destination"/> and clears it, word by word, atomically per word.</summary>
    public void DrainInto(Span<ulong> destination)
    {
        if (destination.Length < _words.Length)
            throw new ArgumentException("destination bitmap is shorter than the source", nameof(destination));
        for (var i = 0; i < _words.Length; i++)
        {
            if (Volatile.Read(ref _words[i]) != 0)
                destination[i] |= Interlocked.Exchange(ref _words[i], 0);
        }
    }

    /// <summary>Enumerates the set pages in ascending order.</summary>
    public IEnumerable<ulong> EnumerateSet()
    {
        for (var w = 0; w < _words.Length; w++)
        {
            var word = _words[w];
            while (word != 0)
            {
                var bit = BitOperations.TrailingZeroCount(word);
                yield return (ulong)w * 64 + (ulong)bit;
                word &= word - 1;
            }
        }
    }
}
