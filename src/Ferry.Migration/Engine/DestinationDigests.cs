using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Engine;

/// <summary>
/// The destination's half of a verified migration (capability verify; docs/migration.md, Verified migration). It
/// follows which pages hold data as the records load (data extents before the first record, then PAGES add, ZERO_RUN
/// and ballooned pages remove), so the digests never read a hole and need no walk inside the downtime. Each DIGEST
/// record arrives on the channel that carried its chunk, behind that chunk's last records, so the channel's loader
/// compares it at once (<see cref="Check"/>); at the channel's END every chunk it carries without a digest must hold
/// nothing here either (<see cref="CheckRest"/>). A difference fails the load naming the block and the chunk, before
/// any state is restored or the guest resumed. Loader threads touch only their own channels' chunks.
/// </summary>
internal sealed class DestinationDigests
{
    private readonly IReadOnlyList<RamBlock> _blocks;
    private readonly PageSet[] _held;     // pages that may hold data, per local block
    private readonly long[] _chunkBase;   // per local block: the stream's number of its first chunk
    private readonly bool[][] _compared;  // per local block: chunks a digest was compared for
    private readonly int _channels;
    private long _chunks, _ticks;

    public DestinationDigests(IReadOnlyList<RamBlock> blocks, StreamHeader header)
    {
        _blocks = blocks;
        _channels = header.Channels;
        _held = new PageSet[blocks.Count];
        _compared = new bool[blocks.Count][];
        for (var b = 0; b < blocks.Count; b++)
        {
            var held = new PageSet(blocks[b].PageCount);
            foreach (var (offset, length) in blocks[b].DataExtents())
                held.AddRange(offset / Page.Size, Page.PagesFor(offset + length) - offset / Page.Size);
            _held[b] = held;
            _compared[b] = new bool[Page.ChunksFor(blocks[b].PageCount)];
        }
        // Chunks are numbered across blocks in the stream's block order, which may differ from this machine's.
        _chunkBase = new long[blocks.Count];
        long chunkBase = 0;
        foreach (var descriptor in header.Blocks)
        {
            var local = blocks.Select((b, i) => (b, i)).First(x => x.b.Name == descriptor.Name).i;
            _chunkBase[local] = chunkBase;
            chunkBase += (long)Page.ChunksFor(descriptor.Size >> Page.Shift);
        }
    }

    /// <summary>Chunks compared so far (digests, and chunks without one that hold data here).</summary>
    public long Chunks => Interlocked.Read(ref _chunks);

    /// <summary>Time the loaders spent comparing, summed over the channels.</summary>
    public double Milliseconds => Interlocked.Read(ref _ticks) * 1000.0 / Stopwatch.Frequency;

    /// <summary>A RAM record was loaded: which of its pages now hold data.</summary>
    public void Loaded(in Record record)
    {
        var held = _held[record.Block];
        switch (record.Type)
        {
            case RecordType.Pages:
                held.AddRange(record.PageOffset >> Page.Shift, record.PageCount);
                break;
            case RecordType.ZeroRun:
                held.RemoveRange(record.PageOffset >> Page.Shift, record.PageCount);
                break;
            case RecordType.BalloonBitmap:
                foreach (var run in PageSet.RunsIn(record.Data.Span, record.PageOffset >> Page.Shift))
                    held.RemoveRange(run.Start, run.Length);
                break;
        }
    }

    /// <summary>Compares a DIGEST record (read on <paramref name="channel"/>) with what this side loaded for its chunk.</summary>
    public void Check(in Record digest, int channel)
    {
        var block = digest.Block;
        var chunk = digest.Chunk;
        var owner = ChunkChannels.ChannelOf(_chunkBase[block], chunk, _channels);
        if (owner != channel)
            throw new StreamFormatException($"channel {channel}: a digest for chunk {chunk} of block '{_blocks[block].Name}', which travels on channel {owner}");
        var start = Stopwatch.GetTimestamp();
        Span<ulong> excluded = stackalloc ulong[Page.ChunkWords];
        excluded.Clear();
        digest.Data.Span.CopyTo(System.Runtime.InteropServices.MemoryMarshal.AsBytes(excluded));
        var here = Compute(block, chunk, excluded);
        _compared[block][chunk] = true;
        Done(start);
        if (here != digest.Digest)
        {
            throw new MigrationException(MigrationErrorKind.VerifyFailed,
                $"memory verification failed: block '{_blocks[block].Name}' chunk {chunk} ({Range(block, chunk)}) differs from the source's (digest 0x{here:X8} here, 0x{digest.Digest:X8} there)");
        }
    }

    /// <summary>At a channel's END: its chunks without a digest hold nothing at the source, so they must hold nothing here.</summary>
    public void CheckRest(int channel)
    {
        Span<ulong> none = stackalloc ulong[Page.ChunkWords];
        none.Clear();
        for (var b = 0; b < _blocks.Count; b++)
        {
            var chunks = _compared[b].Length;
            var held = _held[b].Words;
            for (var chunk = ChunkChannels.FirstOn(_chunkBase[b], channel, _channels); chunk < chunks; chunk += _channels)
            {
                var firstWord = (int)(chunk * Page.ChunkWords);
                if (_compared[b][chunk] || held.Slice(firstWord, Math.Min(Page.ChunkWords, held.Length - firstWord)).IndexOfAnyExcept(0UL) < 0)
                    continue;
                var start = Stopwatch.GetTimestamp();
                var here = Compute(b, chunk, none);
                Done(start);
                if (here != ChunkDigest.OfEmptyChunk(ChunkPages(b, chunk)))
                {
                    throw new MigrationException(MigrationErrorKind.VerifyFailed,
                        $"memory verification failed: block '{_blocks[b].Name}' chunk {chunk} ({Range(b, chunk)}) holds data here and nothing at the source (it sent no digest for it)");
                }
            }
        }
    }

    private uint Compute(int block, long chunk, ReadOnlySpan<ulong> excluded)
    {
        Span<uint> scratch = stackalloc uint[Page.ChunkPages];
        var held = _held[block].Words;
        var firstWord = (int)(chunk * Page.ChunkWords);
        var words = Math.Min(Page.ChunkWords, held.Length - firstWord);
        return ChunkDigest.Compute(_blocks[block], chunk, held.Slice(firstWord, words), excluded[..words], scratch);
    }

    private void Done(long start)
    {
        Interlocked.Add(ref _ticks, Stopwatch.GetTimestamp() - start);
        Interlocked.Increment(ref _chunks);
    }

    private int ChunkPages(int block, long chunk) => (int)Math.Min((ulong)Page.ChunkPages, _blocks[block].PageCount - (ulong)chunk * Page.ChunkPages);

    /// <summary>"pages 1024..1535, offset 0x400000": where the chunk is in its block.</summary>
    private string Range(int block, long chunk)
    {
        var first = (ulong)chunk * Page.ChunkPages;
        return $"pages {first}..{first + (ulong)ChunkPages(block, chunk) - 1}, offset 0x{first * Page.Size:X}";
    }
}
