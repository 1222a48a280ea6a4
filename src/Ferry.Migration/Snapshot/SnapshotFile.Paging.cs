using Ferry.Interop;
using Ferry.Kvm;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Migration.Snapshot;

/// <summary>The lazy restore through userfaultfd: each block demand-paged from the file (<see cref="DemandPager"/>).</summary>
public sealed partial class SnapshotFile
{
    /// <summary>
    /// Lazy restore (the default of <c>--lazy</c>): every block starts "empty but owed" (<see cref="RamBlock.BeginDemandPaging"/>)
    /// with this file as its page source, so the guest can run at once. A page the guest (or the VMM) touches first is
    /// read from its slot and checked against its CRC32C before it is placed; a background fill reads the rest of
    /// the file once, 2 MiB piece by piece, with the same check. Pages absent from the file (zero, never touched,
    /// hinted free) and ballooned pages are resolved locally, never read. A bad page, a read error or a file that
    /// shrank stops the pager of that block with a message naming the file, block and page
    /// (<see cref="DemandPager.Completion"/> faults); the guest is never given the page. The file may be unlinked
    /// or closed afterwards (each block's source holds its own descriptor until its fill completes). Throws
    /// <see cref="IOException"/> when userfaultfd cannot be used, naming the alternative (<c>--lazy=map</c>).
    /// Returns the state sections, which the caller restores after this. <paramref name="options"/>: the pager's
    /// (tests turn the fill off to drive every page through faults).
    /// </summary>
    public SnapshotLoadResult PageInto(IReadOnlyList<RamBlock> blocks, DemandPagingOptions? options = null)
    {
        var targets = MatchBlocks(blocks);
        for (var b = 0; b < _blocks.Length; b++)
        {
            var source = new PageSource(this, _blocks[b]);
            try
            {
                targets[b].BeginDemandPaging(source, options);
            }
            catch (ErrnoException e)
            {
                source.Dispose();
                throw new IOException($"lazy restore of {Path}: block '{_blocks[b].Name}' cannot be demand-paged: {e.Message} (--lazy=map maps the file instead)", e);
            }
            catch
            {
                source.Dispose();
                throw;
            }
        }
        return new SnapshotLoadResult(_state, 0, 0, 0);
    }

    /// <summary>
    /// One block's pages from the file: positional reads of the fixed slots through a duplicate of the file's
    /// descriptor (so it outlives this object), each page checked against its stored CRC32C by the reading thread
    /// before the pager may place it. Thread-safe: the pager's fault and fill threads read at once, each with its own
    /// checker. Present pages are the data; ballooned pages are known zero.
    /// </summary>
    private sealed class PageSource : IPageSource, IDisposable
    {
        private readonly SnapshotFile _file;
        private readonly SnapshotBlock _block;
        private readonly SafeFileHandle _handle;
        private readonly ThreadLocal<PageChecker> _checkers;

        public PageSource(SnapshotFile file, SnapshotBlock block)
        {
            _file = file;
            _block = block;
            _handle = FileHandles.Duplicate(file._file);
            _checkers = new ThreadLocal<PageChecker>(() => new PageChecker(file, stopAtFirst: true, _handle));
            BalloonedPages = block.BalloonedPages == 0 ? null : Ballooned(block);
        }

        private static PageSet Ballooned(SnapshotBlock block)
        {
            var set = new PageSet(block.PageCount);
            set.CopyFrom(block.BalloonBitmap);
            return set;
        }

        public string Description => $"snapshot {_file.Path}";

        public PageSet DataPages => _block.Present;

        public PageSet? BalloonedPages { get; }

        public void ReadPages(ulong firstPage, ulong count, Span<byte> into)
        {
            var checker = _checkers.Value!;
            // A run never spans more than one checker chunk: the pager reads at most one 2 MiB piece at a time.
            if (count > LoadChunkPages)
                throw new ArgumentOutOfRangeException(nameof(count), $"{count} pages in one read (at most {LoadChunkPages})");
            try
            {
                checker.ReadStored(_block, firstPage, firstPage + count);
                _file.ReadPages(_handle, _block, firstPage, count, into);
                checker.Check(_block, firstPage, firstPage, into);
            }
            catch (SnapshotFormatException e)
            {
                var page = e.Fault == SnapshotFault.PageChecksum ? checker.FirstBad : firstPage;
                throw new PageSourceException(e.Message, page, e);
            }
            catch (Exception e) when (e is IOException or UnauthorizedAccessException)
            {
                throw new PageSourceException($"snapshot {_file.Path}: block '{_block.Name}' pages {firstPage}..{firstPage + count - 1}: read error: {e.Message}", firstPage, e);
            }
        }

        public void Dispose()
        {
            _handle.Dispose();
            _checkers.Dispose();
        }
    }
}
