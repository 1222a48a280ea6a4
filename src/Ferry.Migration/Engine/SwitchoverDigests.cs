using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Engine;

/// <summary>
/// The source's half of a verified migration (capability ferry-verify; docs/migration.md, Verified migration). While
/// the migration runs it follows which pages may hold data (<see cref="AddHeld"/>: pass 1's data extents, then every
/// dirty-log sync), so no extent walk lands in the downtime; a page discarded since reads as zero, which is what a
/// hole contributes, so the superset only costs a read. Inside the downtime, after the last pass:
/// <see cref="Prepare"/> takes what is left out of the comparison (pages the guest declared free and has not written
/// since, <see cref="GuestFreePages"/>, and the balloon's pages), then each channel's sender sends one DIGEST record
/// per chunk it carries that holds data or leaves pages out (<see cref="SendChannel"/>), right behind that chunk's
/// last records. A chunk without a record holds nothing here; the destination checks that it holds nothing there
/// either.
/// </summary>
internal sealed class SwitchoverDigests(IReadOnlyList<RamBlock> blocks)
{
    private readonly PageSet[] _held = [.. blocks.Select(b => new PageSet(b.PageCount))];
    private PageSet[] _excluded = [];
    private long _chunks;

    /// <summary>Chunks a digest was sent for.</summary>
    public long Chunks => Interlocked.Read(ref _chunks);

    /// <summary>Pages that may hold data: pass 1's data extents, then the pages of every sync (written since the one before).</summary>
    public void AddHeld(PageSet[] pages)
    {
        for (var b = 0; b < _held.Length; b++)
            _held[b].UnionWith(pages[b].Words);
    }

    /// <summary>The guest is paused and the last pass sent: what the source holds now is what the destination must hold.</summary>
    public void Prepare(GuestFreePages free, BalloonMask balloon)
    {
        _excluded = new PageSet[blocks.Count];
        for (var b = 0; b < blocks.Count; b++)
        {
            var excluded = free[b].Clone();
            // Ballooned pages belong to the host until the guest deflates them, trusted balloon or not: the source
            // discarded them, and the destination holds whatever was sent before or nothing.
            excluded.UnionWith(balloon.Current(b).Words);
            _excluded[b] = excluded;
        }
    }

    /// <summary>Sends the digests of the chunks this channel carries (on the channel's sending thread).</summary>
    public void SendChannel(int channel, int channels, IPageSink sink, CancellationToken cancel)
    {
        Span<uint> scratch = stackalloc uint[Page.ChunkPages];
        long chunkBase = 0;
        for (var b = 0; b < blocks.Count; b++)
        {
            var block = blocks[b];
            var chunks = (long)Page.ChunksFor(block.PageCount);
            var held = _held[b].Words;
            var excluded = _excluded[b].Words;
            for (var chunk = ChunkChannels.FirstOn(chunkBase, channel, channels); chunk < chunks; chunk += channels)
            {
                cancel.ThrowIfCancellationRequested();
                var firstWord = (int)(chunk * Page.ChunkWords);
                var wordCount = Math.Min(Page.ChunkWords, held.Length - firstWord);
                var heldWords = held.Slice(firstWord, wordCount);
                var excludedWords = excluded.Slice(firstWord, wordCount);
                if (heldWords.IndexOfAnyExcept(0UL) < 0 && excludedWords.IndexOfAnyExcept(0UL) < 0)
                    continue;
                var digest = ChunkDigest.Compute(block, chunk, heldWords, excludedWords, scratch);
                sink.WriteDigest((ushort)b, (uint)chunk, digest, _excluded[b].BytesOfWords(firstWord, wordCount));
                Interlocked.Increment(ref _chunks);
            }
            chunkBase += chunks;
        }
    }
}
