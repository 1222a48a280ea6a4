using Ferry.Kvm;

namespace Ferry.Migration.Engine;

/// <summary>Whether pages in the balloon are kept out of the migration, and if not, why.</summary>
public enum BalloonSkipReason
{
    /// <summary>Skipped: the balloon is trusted (the guest negotiated MUST_TELL_HOST).</summary>
    On,
    NoBalloon,
    CapabilityOff,
    DriverNotReady,

    /// <summary>The guest may touch a ballooned page before telling the host, so ballooned pages are sent as ordinary pages.</summary>
    NoMustTellHost,
}

/// <summary>
/// The balloon as a migration sees it: the ballooned pages of each block as of the last refresh, and what the
/// destination has been told of them. A trusted balloon's pages are removed from every pass and travel as
/// BALLOON_BITMAP records, a chunk at a time and only when the chunk's bits changed; an untrusted one's pages are
/// sent like any other and only counted.
/// </summary>
internal sealed class BalloonMask
{
    private readonly PageSet[] _current; // the balloon as of this pass
    private readonly PageSet[] _sent;    // what the destination has been told

    public BalloonMask(IReadOnlyList<RamBlock> blocks, BalloonSkipReason reason)
    {
        Reason = reason;
        _current = [.. blocks.Select(b => new PageSet(b.PageCount))];
        _sent = [.. blocks.Select(b => new PageSet(b.PageCount))];
    }

    public BalloonSkipReason Reason { get; }

    public bool Trusted => Reason == BalloonSkipReason.On;

    /// <summary>The block's ballooned pages as of the last <see cref="Refresh"/>, trusted or not.</summary>
    public PageSet Current(int block) => _current[block];

    /// <summary>Whether the balloon can be trusted: a guest that negotiated MUST_TELL_HOST never touches a ballooned page before deflating it.</summary>
    public static BalloonSkipReason Decide(IMigrationBalloon? balloon, bool capability) => (balloon, capability) switch
    {
        (null, _) => BalloonSkipReason.NoBalloon,
        (_, false) => BalloonSkipReason.CapabilityOff,
        ({ DriverReady: false }, _) => BalloonSkipReason.DriverNotReady,
        ({ MustTellHost: false }, _) => BalloonSkipReason.NoMustTellHost,
        _ => BalloonSkipReason.On,
    };

    /// <summary>Takes the balloon's current bitmaps.</summary>
    public void Refresh(IMigrationBalloon? balloon)
    {
        if (balloon is null)
            return;
        for (var b = 0; b < _current.Length; b++)
            balloon.CopyBalloonBitmap(b, _current[b]);
    }

    /// <summary>
    /// Pass 1: counts the pages neither present in <paramref name="pending"/> (the data extents) nor skipped as
    /// ballooned as never touched, and every page of a trusted balloon as skipped; then masks.
    /// </summary>
    public void CountFirstPass(PageSet[] pending, MigrationCounters counters)
    {
        for (var b = 0; b < pending.Length; b++)
        {
            var covered = Trusted ? pending[b].CountUnion(_current[b]) : pending[b].Count();
            counters.AddUntouched((long)(pending[b].PageCount - covered));
            if (Trusted)
                counters.AddBallooned((long)_current[b].Count(), 0);
        }
        Mask(pending, counters, countSkipped: false);
    }

    /// <summary>Removes trusted balloon pages from the pass (counting them), or counts ballooned pages sent anyway.</summary>
    public void Mask(PageSet[] pending, MigrationCounters counters, bool countSkipped)
    {
        long skipped = 0, sentAnyway = 0;
        for (var b = 0; b < pending.Length; b++)
        {
            if (Trusted)
                skipped += (long)pending[b].RemoveAll(_current[b]);
            else
                sentAnyway += (long)pending[b].CountCommon(_current[b]);
        }
        counters.AddBallooned(countSkipped ? skipped : 0, sentAnyway);
    }

    /// <summary>A trusted balloon's bits of one chunk, when they changed since the destination last heard of them.</summary>
    public void SendDelta(IPageSink sink, int block, long chunk)
    {
        if (!Trusted)
            return;
        var current = _current[block];
        var firstWord = (int)(chunk * Page.ChunkWords);
        var wordCount = Math.Min(Page.ChunkWords, current.Words.Length - firstWord);
        if (current.WordsEqual(_sent[block], firstWord, wordCount))
            return;
        sink.WriteBalloonBitmap((ushort)block, (ulong)firstWord * 64, current.BytesOfWords(firstWord, wordCount));
        _sent[block].CopyWordsFrom(current, firstWord, wordCount);
    }
}
