using System.Numerics;
using Ferry.Kvm;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Engine;

/// <summary>What one chunk's scan sent: data pages and zero pages.</summary>
public readonly record struct ChunkCounts(long DataPages, long ZeroPages);

/// <summary>
/// The one page scanner: turns a chunk of a block and its page set into zero runs and data runs on an
/// <see cref="IPageSink"/>, for migrations and snapshot saves alike. Each 64-page word is taken out of the set with
/// one atomic exchange, so a free page hint arriving later finds the pages gone (already sent) and cannot drop
/// them; zero pages become ZERO_RUN records, runs of data pages PAGES records of up to
/// <see cref="StreamLimits.MaxPagesPerRecord"/> pages, each paid for at the shared bandwidth limiter first. Only
/// pages in the set are read (a never-touched page is a hole, and reading one would allocate it). Allocation-free;
/// one scanner serves every sending thread.
/// </summary>
public sealed class PageScanner(BandwidthLimiter limiter)
{
    /// <summary>Sends the pages of chunk <paramref name="chunk"/> of <paramref name="block"/> that are in <paramref name="pages"/>, and clears them there.</summary>
    /// <param name="maxRunPages">
    /// The longest data run per record. Postcopy's background stream uses short runs: a page taken out of the set
    /// waits for its run's turn at the limiter, and a vCPU that faults on it waits with it.
    /// </param>
    public ChunkCounts ScanChunk(PageSet pages, RamBlock block, ushort index, long chunk, IPageSink sink, CancellationToken cancel, int maxRunPages = StreamLimits.MaxPagesPerRecord)
    {
        var firstWord = (int)(chunk * Page.ChunkWords);
        var endWord = Math.Min(firstWord + Page.ChunkWords, pages.Words.Length);
        var runs = new RunWriter(limiter, block, index, sink, cancel) { MaxRunPages = (ulong)maxRunPages };
        for (var w = firstWord; w < endWord; w++)
        {
            var bits = pages.TakeWord(w);
            while (bits != 0)
            {
                var page = (ulong)w * 64 + (ulong)BitOperations.TrailingZeroCount(bits);
                bits &= bits - 1;
                runs.Add(page);
            }
        }
        return runs.Finish();
    }

    /// <summary>
    /// Sends pages [<paramref name="first"/>, +<paramref name="count"/>) of <paramref name="block"/>, which the caller
    /// has already taken out of its set (postcopy's answer to a request): zero runs and data runs as for a chunk.
    /// </summary>
    public ChunkCounts ScanRun(RamBlock block, ushort index, ulong first, ulong count, IPageSink sink, CancellationToken cancel)
    {
        var runs = new RunWriter(limiter, block, index, sink, cancel);
        for (var page = first; page < first + count; page++)
            runs.Add(page);
        return runs.Finish();
    }

    /// <summary>The open data run and zero run of one chunk's scan; a page of the other kind or a gap closes a run.</summary>
    private struct RunWriter(BandwidthLimiter limiter, RamBlock block, ushort index, IPageSink sink, CancellationToken cancel)
    {
        private ulong _dataStart, _dataLength, _zeroStart, _zeroLength;

        public ulong MaxRunPages { get; init; } = StreamLimits.MaxPagesPerRecord;

        /// <summary>A page of the scan, in ascending order: a zero page or a data page.</summary>
        public void Add(ulong page)
        {
            block.EnsureResident(page * Page.Size, Page.Size);
            if (ZeroPage.IsZero(block.Mapping.GetSpan(page * Page.Size, Page.Size)))
                AddZero(page);
            else
                AddData(page);
        }

        /// <summary>Writes the open runs; what the scan sent.</summary>
        public ChunkCounts Finish()
        {
            FlushData();
            FlushZero();
            return new ChunkCounts(DataPages, ZeroPages);
        }

        public long DataPages { get; private set; }
        public long ZeroPages { get; private set; }

        public void AddZero(ulong page)
        {
            if (_dataLength != 0)
                FlushData();
            if (_zeroLength != 0 && _zeroStart + _zeroLength != page)
                FlushZero();
            if (_zeroLength == 0)
                _zeroStart = page;
            _zeroLength++;
        }

        public void AddData(ulong page)
        {
            if (_zeroLength != 0)
                FlushZero();
            if (_dataLength != 0 && _dataStart + _dataLength != page)
                FlushData();
            if (_dataLength == 0)
                _dataStart = page;
            _dataLength++;
            if (_dataLength == MaxRunPages)
                FlushData();
        }

        public void FlushData()
        {
            if (_dataLength == 0)
                return;
            var bytes = (int)(_dataLength * Page.Size);
            limiter.Acquire(bytes, cancel);
            block.EnsureResident(_dataStart * Page.Size, (ulong)bytes);
            sink.WritePages(index, _dataStart * Page.Size, block.Mapping.GetSpan(_dataStart * Page.Size, bytes));
            DataPages += (long)_dataLength;
            _dataLength = 0;
        }

        public void FlushZero()
        {
            if (_zeroLength == 0)
                return;
            sink.WriteZeroRun(index, _zeroStart * Page.Size, (uint)_zeroLength);
            ZeroPages += (long)_zeroLength;
            _zeroLength = 0;
        }
    }
}
