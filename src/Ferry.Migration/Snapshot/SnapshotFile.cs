using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Migration.Snapshot;

/// <summary>One RAM block of an opened snapshot: its place in the file and its (validated) bitmaps.</summary>
public sealed class SnapshotBlock
{
    private readonly PageSet _present;
    private readonly PageSet _ballooned;

    internal SnapshotBlock(int index, BlockEntry entry, PageSet present, PageSet ballooned)
    {
        Index = index;
        Name = entry.Name;
        Size = entry.Size;
        PagesOffset = entry.PagesOffset;
        PageChecksumsOffset = entry.PageChecksumsOffset;
        _present = present;
        _ballooned = ballooned;
        PresentPages = present.Count();
        BalloonedPages = ballooned.Count();
    }

    public int Index { get; }

    public string Name { get; }

    public ulong Size { get; }

    public ulong PageCount => Size >> Page.Shift;

    /// <summary>File offset of page 0's slot; page i is at PagesOffset + i * 4096.</summary>
    public ulong PagesOffset { get; }

    /// <summary>File offset of page 0's CRC32C; page i's is at PageChecksumsOffset + i * 4.</summary>
    public ulong PageChecksumsOffset { get; }

    /// <summary>Pages whose slot holds their contents.</summary>
    public ulong PresentPages { get; }

    /// <summary>Pages that were in the (trusted) balloon: absent, and to be given back to the host on restore.</summary>
    public ulong BalloonedPages { get; }

    /// <summary>Pages neither present nor ballooned: zero, never touched, discarded or hinted free. They load as holes.</summary>
    public ulong AbsentPages => PageCount - PresentPages - BalloonedPages;

    /// <summary>Bit i (byte i/8, bit i%8) = page i is present.</summary>
    public ReadOnlySpan<byte> PresentBitmap => _present.Bytes;

    /// <summary>Bit i = page i is in the balloon: what <see cref="IMigrationTarget.ApplyBalloonBitmap"/> takes (first page 0).</summary>
    public ReadOnlySpan<byte> BalloonBitmap => _ballooned.Bytes;

    /// <summary>The pages whose slot holds their contents (read-only by convention: the file's truth).</summary>
    internal PageSet Present => _present;

    public bool IsPresent(ulong page) => _present.Contains(page);
}

/// <summary>
/// What <see cref="SnapshotFile.LoadInto"/> or <see cref="SnapshotFile.MapInto"/> did. <paramref name="PagesChecked"/>
/// pages were checked against their checksums, which took <paramref name="PageCheckMilliseconds"/>: for an eager
/// load the longest any one loading thread spent computing and comparing checksums (the reads not counted); for a
/// lazy one the whole verifying read of the file before it was mapped.
/// </summary>
public sealed record SnapshotLoadResult(
    IReadOnlyList<StateSection> State, long PagesLoaded, long BytesRead, long PagesDiscarded, long PagesChecked = 0, double PageCheckMilliseconds = 0);

/// <summary>
/// An opened, fully validated snapshot file (docs/snapshot-format.md). <see cref="Open"/> treats the file as
/// hostile: it checks the header, the completion mark, every block entry, every offset and length against the file
/// and against each other, every bitmap and every state section (each with its checksum) before anything is
/// returned, and reports any fault as a <see cref="SnapshotFormatException"/> naming it. Pages are too many to
/// check up front: each present page is checked against its CRC32C as it is loaded (<see cref="LoadInto"/>), before
/// the file is mapped (<see cref="MapInto"/>), or by <see cref="VerifyPages"/>; the bitmaps say which slots hold a page.
/// </summary>
public sealed partial class SnapshotFile : IDisposable
{
    private const ulong LoadChunkPages = 4 * Page.ChunkPages; // 8 MiB: the unit threads take, and the largest single read

    private readonly SafeFileHandle _file;
    private readonly SnapshotBlock[] _blocks;
    private readonly StateSection[] _state;
    private readonly uint[] _stateCrcs;
    private readonly int _checksumsVerified;

    private SnapshotFile(string path, SafeFileHandle file, long length, SnapshotBlock[] blocks, StateSection[] state, uint[] stateCrcs, int checksums)
    {
        Path = path;
        _file = file;
        FileLength = length;
        _blocks = blocks;
        _state = state;
        _stateCrcs = stateCrcs;
        _checksumsVerified = checksums;
    }

    public string Path { get; }

    /// <summary>The file's size in bytes (its apparent size; most of it is usually holes).</summary>
    public long FileLength { get; }

    public IReadOnlyList<SnapshotBlock> Blocks => _blocks;

    /// <summary>The vCPU and device state, validated and in file order.</summary>
    public IReadOnlyList<StateSection> State => _state;

    /// <summary>Opens and validates a snapshot. Throws <see cref="SnapshotFormatException"/> and nothing else.</summary>
    public static SnapshotFile Open(string path)
    {
        SafeFileHandle file;
        try
        {
            file = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        }
        catch (IOException e) when (e.HResult == Ferry.Interop.Libc.EAGAIN)
        {
            // The writer holds an exclusive lock on the file for as long as it is open.
            throw new SnapshotFormatException(SnapshotFault.NotFinished, $"snapshot {path}: not finished: a save into it is still running (its writer holds the file locked)", e);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException)
        {
            throw new SnapshotFormatException(SnapshotFault.Io, $"snapshot {path}: cannot open: {e.Message}", e);
        }
        try
        {
            return new Validator(path, file).Run();
        }
        catch (Exception e)
        {
            file.Dispose();
            if (e is SnapshotFormatException)
                throw;
            // An I/O error while reading, or a bug: still one exception type for the caller, naming the file.
            throw new SnapshotFormatException(SnapshotFault.Io, $"snapshot {path}: cannot read: {e.Message}", e);
        }
    }

    /// <summary>
    /// Everything <c>ferry snapshot inspect</c> shows; with <paramref name="verifyPages"/> also every present page
    /// checked against its checksum by <paramref name="threads"/> threads (<see cref="VerifyPages"/>).
    /// </summary>
    public SnapshotInspection Inspect(bool verifyPages = false, int threads = 4)
    {
        long allocated;
        try
        {
            allocated = SparseFile.DataBytes(_file);
        }
        catch (Exception e) when (e is IOException or Ferry.Interop.ErrnoException)
        {
            allocated = -1;
        }
        var blocks = _blocks.Select(b => new SnapshotBlockInfo(b.Name, b.Size, b.PageCount, b.PresentPages, b.BalloonedPages, b.AbsentPages, b.PagesOffset)).ToArray();
        var state = _state.Select((s, i) => new SnapshotStateInfo(s.Kind, s.Index, s.Name, s.Blob.Length, _stateCrcs[i])).ToArray();
        var present = _blocks.Aggregate(0UL, (sum, b) => sum + b.PresentPages);
        return new SnapshotInspection(
            Path, SnapshotFormat.Version, Page.Size, FileLength, allocated,
            (long)present * Page.Size, blocks, state,
            new SnapshotChecksums(_checksumsVerified, 0, "ok: header, completion mark, block table, bitmaps and state sections verified; " +
                (verifyPages ? "pages verified below" : "pages are checked as they load (--verify checks them all now)")),
            verifyPages ? VerifyPages(threads) : null);
    }

    /// <summary>
    /// Reads every present page (<paramref name="threads"/> threads, 8 MiB chunks, a run of contiguous present pages
    /// in one read) and checks it against its CRC32C. Lists every bad page (the first <see cref="SnapshotVerification.MaxListed"/>
    /// by name) instead of stopping at the first. Throws <see cref="SnapshotFormatException"/> only when the file
    /// cannot be read.
    /// </summary>
    public SnapshotVerification VerifyPages(int threads) => Verify(threads, stopAtFirst: false);

    /// <summary>
    /// Loads the snapshot's RAM into <paramref name="blocks"/> (matched by name; sizes must agree, and every block
    /// must be in both): present pages are read with positional reads straight into the block mappings, a run of
    /// contiguous present pages in one read (at most 8 MiB), by <paramref name="threads"/> threads taking 8 MiB
    /// chunks in turn, and each page read is checked against its CRC32C by the thread that read it (a bad page
    /// fails the load with a <see cref="SnapshotFault.PageChecksum"/> fault naming its block and page; the guest
    /// must then not run). Absent pages end as holes: pages the blocks already hold data in (a new machine's boot
    /// setup writes a few) are discarded first, so nothing but the snapshot's contents remains. Ballooned pages are
    /// holes too; their bitmap is <see cref="SnapshotBlock.BalloonBitmap"/>, for the balloon's own state. Returns
    /// the state sections, which the caller restores after this.
    /// </summary>
    public SnapshotLoadResult LoadInto(IReadOnlyList<RamBlock> blocks, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var targets = MatchBlocks(blocks);

        // Holes first: pages with data in the target that the snapshot does not hold.
        long discarded = 0;
        for (var b = 0; b < _blocks.Length; b++)
        {
            var target = targets[b];
            var present = _blocks[b].Present;
            foreach (var (offset, length) in target.DataExtents().ToArray())
            {
                // The pages of the extent the snapshot does not hold: discard each gap between present runs.
                var position = offset >> Page.Shift;
                var end = (offset + length) >> Page.Shift;
                while (present.NextGap(ref position, end, out var start, out var count))
                {
                    target.Discard(start << Page.Shift, count << Page.Shift);
                    discarded += (long)count;
                }
            }
        }

        var pages = ReadChecked(threads, "loading", stopAtFirst: true,
            () => (b, start, count) => targets[b].Mapping.GetSpan(start * Page.Size, (int)(count * Page.Size)), out var checkers);
        var checkMs = checkers.Select(c => c.Elapsed.TotalMilliseconds).DefaultIfEmpty(0).Max();
        return new SnapshotLoadResult(_state, pages, pages * Page.Size, discarded, pages, checkMs);
    }

    /// <summary>
    /// Lazy restore: maps every block's page area copy-on-write over the VM's RAM (<see cref="RamBlock.MapCopyOnWrite"/>),
    /// so no page is copied until the guest (or the VMM) touches it. The guest would read its pages straight from
    /// the page cache, past any check, so every present page is checked against its CRC32C first, by
    /// <paramref name="threads"/> threads reading the file once (which also warms the page cache the mapping
    /// then uses); a bad page fails with a <see cref="SnapshotFault.PageChecksum"/> fault and nothing is mapped.
    /// The page areas were checked to lie inside the file when it was opened; the file must then stay as it is
    /// while the VM runs (a file truncated under a mapping faults the process on the next touch of a page past its
    /// new end). Returns the state sections, which the caller restores after this.
    /// </summary>
    public SnapshotLoadResult MapInto(IReadOnlyList<RamBlock> blocks, int threads)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var targets = MatchBlocks(blocks);
        var verified = Verify(threads, stopAtFirst: true);
        for (var b = 0; b < _blocks.Length; b++)
            targets[b].MapCopyOnWrite(_file, _blocks[b].PagesOffset, _blocks[b].Present.Words);
        return new SnapshotLoadResult(_state, 0, 0, 0, verified.PagesChecked, verified.Milliseconds);
    }

    private SnapshotVerification Verify(int threads, bool stopAtFirst)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(threads, 1);
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var pages = ReadChecked(threads, "verifying its pages", stopAtFirst, () =>
        {
            var buffer = GC.AllocateUninitializedArray<byte>((int)LoadChunkPages * Page.Size);
            return (_, _, count) => buffer.AsSpan(0, (int)(count * Page.Size));
        }, out var checkers);
        var bad = checkers.SelectMany(c => c.Bad).OrderBy(p => Array.FindIndex(_blocks, b => b.Name == p.Block)).ThenBy(p => p.Page)
            .Take(SnapshotVerification.MaxListed).ToArray();
        return new SnapshotVerification(pages, pages * Page.Size, checkers.Sum(c => c.BadCount), bad, clock.Elapsed.TotalMilliseconds);
    }

    /// <summary>Where a run of present pages (block index, first page, page count) is read to.</summary>
    private delegate Span<byte> RunTarget(int block, ulong start, ulong count);

    /// <summary>
    /// Reads every present page on <paramref name="threads"/> threads, each run of contiguous present pages in one
    /// read into the span its thread's <see cref="RunTarget"/> (made by <paramref name="perThread"/>) gives, and
    /// checks each page against its checksum in the thread that read it. Returns the pages read; each thread's
    /// checks are in <paramref name="checkers"/>.
    /// </summary>
    private long ReadChecked(int threads, string what, bool stopAtFirst, Func<RunTarget> perThread, out PageChecker[] checkers)
    {
        var all = new System.Collections.Concurrent.ConcurrentBag<PageChecker>();
        var pages = ForEachChunk(threads, what, () =>
        {
            var checker = new PageChecker(this, stopAtFirst);
            all.Add(checker);
            var target = perThread();
            return (b, first, end) =>
            {
                var block = _blocks[b];
                if (!checker.ReadStored(block, first, end))
                    return 0;
                long read = 0;
                var position = first;
                while (block.Present.NextRun(ref position, end, out var start, out var length))
                {
                    var into = target(b, start, length);
                    ReadPages(block, start, length, into);
                    checker.Check(block, first, start, into);
                    read += (long)length;
                }
                return read;
            };
        });
        checkers = [.. all];
        return pages;
    }

    /// <summary>
    /// Runs <paramref name="perThread"/>'s chunk work on <paramref name="threads"/> threads taking 8 MiB chunks of
    /// every block in turn (each thread first makes its own, with its own buffers); returns the sum of what the
    /// chunks return. The first failure stops every thread; it is thrown as a <see cref="SnapshotFormatException"/>.
    /// </summary>
    private long ForEachChunk(int threads, string what, Func<Func<int, ulong, ulong, long>> perThread)
    {
        var chunkBase = new long[_blocks.Length + 1];
        for (var b = 0; b < _blocks.Length; b++)
            chunkBase[b + 1] = chunkBase[b] + (long)((_blocks[b].PageCount + LoadChunkPages - 1) / LoadChunkPages);
        long nextChunk = -1, total = 0;
        Exception? error = null;
        void Work()
        {
            try
            {
                var chunkWork = perThread();
                long mine = 0;
                while (Volatile.Read(ref error) is null)
                {
                    var chunk = Interlocked.Increment(ref nextChunk);
                    if (chunk >= chunkBase[^1])
                        break;
                    var b = 0;
                    while (chunk >= chunkBase[b + 1])
                        b++;
                    var first = (ulong)(chunk - chunkBase[b]) * LoadChunkPages;
                    mine += chunkWork(b, first, Math.Min(first + LoadChunkPages, _blocks[b].PageCount));
                }
                Interlocked.Add(ref total, mine);
            }
            catch (Exception e)
            {
                Interlocked.CompareExchange(ref error, e, null);
            }
        }
        WorkerThreads.Run((int)Math.Min(threads, Math.Max(1, chunkBase[^1])), "snapshot-pages", _ => Work());
        if (error is SnapshotFormatException)
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(error).Throw();
        if (error is not null)
            throw new SnapshotFormatException(SnapshotFault.Io, $"snapshot {Path}: {what} failed: {error.Message}", error);
        return total;
    }

    /// <summary>Reads pages [start, start + count) of <paramref name="block"/> into <paramref name="into"/>.</summary>
    private void ReadPages(SnapshotBlock block, ulong start, ulong count, Span<byte> into) => ReadPages(_file, block, start, count, into);

    /// <summary>The same from <paramref name="file"/> (this file's own handle, or a duplicate that outlives it).</summary>
    private void ReadPages(SafeFileHandle file, SnapshotBlock block, ulong start, ulong count, Span<byte> into)
    {
        if (!SparseFile.ReadExactly(file, into, (long)(block.PagesOffset + start * Page.Size)))
            throw new SnapshotFormatException(SnapshotFault.Truncated, $"snapshot {Path}: truncated: block '{block.Name}' pages {start}..{start + count - 1} end early (the file changed after it was opened?)");
    }

    /// <summary>
    /// One thread's page checks: the stored checksums of its current chunk (one read per chunk), and the
    /// checksums of the pages it read, compared. With <c>stopAtFirst</c> a bad page throws; without, each is counted
    /// (and the first ones kept by name). Reads from <paramref name="handle"/> when given (a duplicate of the file's
    /// handle that outlives it: a lazy restore's page source).
    /// </summary>
    private sealed class PageChecker(SnapshotFile file, bool stopAtFirst, SafeFileHandle? handle = null)
    {
        private readonly uint[] _stored = new uint[LoadChunkPages];
        private readonly uint[] _computed = new uint[LoadChunkPages];
        private readonly SafeFileHandle _handle = handle ?? file._file;
        private long _ticks;

        /// <summary>With stopAtFirst: the bad page the last check threw for.</summary>
        public ulong FirstBad { get; private set; }

        public List<SnapshotBadPage> Bad { get; } = [];

        public long BadCount { get; private set; }

        /// <summary>Time spent computing and comparing checksums (not reading).</summary>
        public TimeSpan Elapsed => System.Diagnostics.Stopwatch.GetElapsedTime(0, _ticks);

        /// <summary>Reads the stored checksums of pages [first, end); false when none of them is present (nothing to check).</summary>
        public bool ReadStored(SnapshotBlock block, ulong first, ulong end)
        {
            var position = first;
            if (!block.Present.NextRun(ref position, end, out _, out _))
                return false;
            var bytes = MemoryMarshal.AsBytes(_stored.AsSpan(0, (int)(end - first)));
            if (!SparseFile.ReadExactly(_handle, bytes, (long)(block.PageChecksumsOffset + first * SnapshotFormat.PageChecksumSize)))
                throw new SnapshotFormatException(SnapshotFault.Truncated, $"snapshot {file.Path}: truncated: the page checksums of block '{block.Name}' pages {first}..{end - 1} end early (the file changed after it was opened?)");
            return true;
        }

        /// <summary>Checks the pages from <paramref name="start"/> held in <paramref name="data"/>, in the chunk from <paramref name="first"/>.</summary>
        public void Check(SnapshotBlock block, ulong first, ulong start, ReadOnlySpan<byte> data)
        {
            var began = System.Diagnostics.Stopwatch.GetTimestamp();
            var count = data.Length / Page.Size;
            var computed = _computed.AsSpan(0, count);
            var stored = _stored.AsSpan((int)(start - first), count);
            Crc32C.ComputeEach(data, Page.Size, computed);
            if (!computed.SequenceEqual(stored))
            {
                for (var i = 0; i < count; i++)
                {
                    if (computed[i] == stored[i])
                        continue;
                    var page = start + (ulong)i;
                    FirstBad = page;
                    if (stopAtFirst)
                        throw new SnapshotFormatException(SnapshotFault.PageChecksum,
                            $"snapshot {file.Path}: block '{block.Name}' page {page}: page checksum mismatch (stored 0x{stored[i]:X8}, computed 0x{computed[i]:X8}): the page or its checksum is damaged");
                    BadCount++;
                    if (Bad.Count < SnapshotVerification.MaxListed)
                        Bad.Add(new SnapshotBadPage(block.Name, page, stored[i], computed[i]));
                }
            }
            _ticks += System.Diagnostics.Stopwatch.GetTimestamp() - began;
        }
    }

    private RamBlock[] MatchBlocks(IReadOnlyList<RamBlock> blocks)
    {
        string Describe(IEnumerable<(string Name, ulong Size)> list) => string.Join(", ", list.Select(b => $"{b.Name} ({b.Size} bytes)"));
        var mismatch = $"snapshot {Path}: its RAM blocks [{Describe(_blocks.Select(b => (b.Name, b.Size)))}] are not the VM's [{Describe(blocks.Select(b => (b.Name, b.Size)))}]";
        var targets = new RamBlock[_blocks.Length];
        for (var b = 0; b < _blocks.Length; b++)
        {
            var target = blocks.FirstOrDefault(t => t.Name == _blocks[b].Name)
                ?? throw new SnapshotFormatException(SnapshotFault.BlockMismatch, $"{mismatch}: the VM has no block '{_blocks[b].Name}'");
            if (target.Size != _blocks[b].Size)
                throw new SnapshotFormatException(SnapshotFault.BlockMismatch, $"{mismatch}: block '{target.Name}' is {_blocks[b].Size} bytes in the snapshot and {target.Size} in the VM");
            targets[b] = target;
        }
        if (blocks.Count != _blocks.Length || blocks.Select(t => t.Name).Distinct().Count() != blocks.Count)
            throw new SnapshotFormatException(SnapshotFault.BlockMismatch, $"{mismatch}: the VM has blocks the snapshot does not");
        return targets;
    }

    public void Dispose() => _file.Dispose();

    /// <summary>The checks of <see cref="Open"/>, in the order the file is read. Each fault has its own message.</summary>
    private sealed class Validator(string path, SafeFileHandle file)
    {
        private readonly List<(ulong Start, ulong End, string What)> _regions = [];
        private long _length;
        private int _checksums;

        private SnapshotFormatException Fault(SnapshotFault fault, string detail) => new(fault, $"snapshot {path}: {detail}");

        public SnapshotFile Run()
        {
            _length = RandomAccess.GetLength(file);
            var header = new byte[SnapshotFormat.HeaderSize];
            if (_length < SnapshotFormat.HeaderSize || !SparseFile.ReadExactly(file, header, 0))
                throw Fault(SnapshotFault.Truncated, $"truncated: the file is {_length} bytes, shorter than the {SnapshotFormat.HeaderSize}-byte header");
            var fields = CheckHeader(header);

            var entries = ReadBlockTable(fields);
            CheckOverlaps();
            var blocks = new SnapshotBlock[entries.Length];
            for (var b = 0; b < entries.Length; b++)
                blocks[b] = ReadBitmaps(b, entries[b]);
            var (state, crcs) = ReadState(fields);
            return new SnapshotFile(path, file, _length, blocks, state, crcs, _checksums);
        }

        private SnapshotHeader CheckHeader(ReadOnlySpan<byte> header)
        {
            if (!header[..8].SequenceEqual(SnapshotFormat.Magic))
                throw Fault(SnapshotFault.BadMagic, $"not a Ferry snapshot: wrong magic {Convert.ToHexString(header[..8])} (expected \"FERRYSNP\")");
            var version = BinaryPrimitives.ReadUInt32LittleEndian(header[8..]);
            // The version is checked before the checksum: another version may lay its header out differently.
            if (version == SnapshotFormat.VersionWithoutPageChecksums)
                throw Fault(SnapshotFault.UnsupportedVersion, $"unsupported version {version}: it predates page checksums (this Ferry reads version {SnapshotFormat.Version} only, whose every page carries a CRC32C); re-save the VM with this Ferry");
            if (version != SnapshotFormat.Version)
                throw Fault(SnapshotFault.UnsupportedVersion, $"unsupported version {version} (this Ferry reads version {SnapshotFormat.Version})");
            var crc = BinaryPrimitives.ReadUInt32LittleEndian(header[SnapshotFormat.HeaderCrcOffset..]);
            var computed = Crc32C.Compute(header[..SnapshotFormat.HeaderCrcOffset]);
            if (crc != computed)
                throw Fault(SnapshotFault.HeaderChecksum, $"header checksum mismatch (stored 0x{crc:X8}, computed 0x{computed:X8})");
            _checksums++;

            var headerLength = BinaryPrimitives.ReadUInt32LittleEndian(header[12..]);
            if (headerLength != SnapshotFormat.HeaderSize)
                throw Fault(SnapshotFault.BadHeader, $"header length {headerLength} is not {SnapshotFormat.HeaderSize}");
            var pageSize = BinaryPrimitives.ReadUInt32LittleEndian(header[16..]);
            if (pageSize != Page.Size)
                throw Fault(SnapshotFault.BadHeader, $"unsupported page size {pageSize} (only {Page.Size})");
            var flags = BinaryPrimitives.ReadUInt32LittleEndian(header[60..]);
            if (flags != 0)
                throw Fault(SnapshotFault.BadHeader, $"unknown header flags 0x{flags:X8}");
            if (header[72..SnapshotFormat.HeaderCrcOffset].ContainsAnyExcept((byte)0) || header[112..].ContainsAnyExcept((byte)0))
                throw Fault(SnapshotFault.BadHeader, "reserved header bytes are not zero");

            // A save that failed or still runs has a valid header but no mark: it must never load.
            var mark = header.Slice(SnapshotFormat.CompletionMarkOffset, SnapshotFormat.CompletionMarkSize);
            if (!mark.ContainsAnyExcept((byte)0))
                throw Fault(SnapshotFault.NotFinished, "not finished: the completion mark is missing (the save failed, was interrupted, or is still running)");
            Span<byte> expected = stackalloc byte[SnapshotFormat.CompletionMarkSize];
            SnapshotHeader.EncodeCompletionMark(crc, expected);
            if (!mark.SequenceEqual(expected))
                throw Fault(SnapshotFault.CompletionMark, "not finished: the completion mark is corrupt or belongs to another header");
            _checksums++;

            var fields = new SnapshotHeader(
                BinaryPrimitives.ReadUInt32LittleEndian(header[20..]),
                BinaryPrimitives.ReadUInt64LittleEndian(header[24..]),
                BinaryPrimitives.ReadUInt64LittleEndian(header[32..]),
                BinaryPrimitives.ReadUInt64LittleEndian(header[40..]),
                BinaryPrimitives.ReadUInt64LittleEndian(header[48..]),
                BinaryPrimitives.ReadUInt32LittleEndian(header[56..]),
                BinaryPrimitives.ReadUInt64LittleEndian(header[64..]));

            if ((ulong)_length < fields.FileLength)
                throw Fault(SnapshotFault.Truncated, $"truncated: the file is {_length} bytes, its header says {fields.FileLength}");
            if ((ulong)_length > fields.FileLength)
                throw Fault(SnapshotFault.TrailingData, $"the file is {_length} bytes, {(ulong)_length - fields.FileLength} more than its header says ({fields.FileLength})");
            if (fields.BlockCount is 0 or > SnapshotFormat.MaxBlocks)
                throw Fault(SnapshotFault.BlockCount, $"block count {fields.BlockCount} is absurd (1..{SnapshotFormat.MaxBlocks})");
            if (fields.BlockTableLength != fields.BlockCount * (ulong)SnapshotFormat.BlockEntrySize)
                throw Fault(SnapshotFault.BadHeader, $"block table length {fields.BlockTableLength} is not {fields.BlockCount} x {SnapshotFormat.BlockEntrySize}");
            if (fields.StateCount > SnapshotFormat.MaxStateSections)
                throw Fault(SnapshotFault.StateLayout, $"state section count {fields.StateCount} is absurd (at most {SnapshotFormat.MaxStateSections})");
            if (fields.StateLength > SnapshotFormat.MaxStateAreaBytes)
                throw Fault(SnapshotFault.StateLayout, $"state area length {fields.StateLength} is absurd (at most {SnapshotFormat.MaxStateAreaBytes})");
            if (fields.StateLength < fields.StateCount * (ulong)SnapshotFormat.StateSectionHeaderSize)
                throw Fault(SnapshotFault.StateLayout, $"a {fields.StateLength}-byte state area cannot hold {fields.StateCount} sections");
            AddRegion(0, SnapshotFormat.HeaderSize, "the file header", fields.FileLength);
            AddRegion(fields.BlockTableOffset, fields.BlockTableLength, "the block table", fields.FileLength);
            AddRegion(fields.StateOffset, fields.StateLength, "the state area", fields.FileLength);
            return fields;
        }

        private void AddRegion(ulong offset, ulong length, string what, ulong fileLength)
        {
            if (offset > fileLength || length > fileLength - offset)
                throw Fault(SnapshotFault.OutOfBounds, $"{what} [{offset}, +{length}) runs past the end of the file ({fileLength} bytes)");
            if (length != 0)
                _regions.Add((offset, offset + length, what));
        }

        private void CheckOverlaps()
        {
            var sorted = _regions.OrderBy(r => r.Start).ToArray();
            for (var i = 1; i < sorted.Length; i++)
            {
                if (sorted[i].Start < sorted[i - 1].End)
                    throw Fault(SnapshotFault.Overlap, $"{sorted[i - 1].What} [{sorted[i - 1].Start}, {sorted[i - 1].End}) and {sorted[i].What} [{sorted[i].Start}, {sorted[i].End}) overlap");
            }
        }

        private BlockEntry[] ReadBlockTable(SnapshotHeader fields)
        {
            var table = new byte[fields.BlockTableLength];
            if (!SparseFile.ReadExactly(file, table, (long)fields.BlockTableOffset))
                throw Fault(SnapshotFault.Truncated, "truncated: the block table ends early");
            var entries = new BlockEntry[fields.BlockCount];
            var names = new HashSet<string>(StringComparer.Ordinal);
            var strictUtf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
            for (var b = 0; b < entries.Length; b++)
            {
                var entry = table.AsSpan(b * SnapshotFormat.BlockEntrySize, SnapshotFormat.BlockEntrySize);
                var where = $"block table entry {b}";
                var crc = BinaryPrimitives.ReadUInt32LittleEndian(entry[SnapshotFormat.BlockEntryCrcOffset..]);
                if (crc != Crc32C.Compute(entry[..SnapshotFormat.BlockEntryCrcOffset]))
                    throw Fault(SnapshotFault.BlockEntryChecksum, $"{where}: block table checksum mismatch");
                _checksums++;
                var nameLength = BinaryPrimitives.ReadUInt16LittleEndian(entry);
                if (nameLength is 0 or > SnapshotFormat.MaxNameBytes)
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: name length {nameLength} is absurd (1..{SnapshotFormat.MaxNameBytes})");
                if (BinaryPrimitives.ReadUInt16LittleEndian(entry[2..]) != 0 || entry[(4 + nameLength)..72].ContainsAnyExcept((byte)0) ||
                    entry[128..SnapshotFormat.BlockEntryCrcOffset].ContainsAnyExcept((byte)0))
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: reserved bytes are not zero");
                string name;
                try
                {
                    name = strictUtf8.GetString(entry.Slice(4, nameLength));
                }
                catch (DecoderFallbackException)
                {
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: the name is not valid UTF-8");
                }
                where = $"block '{name}'";
                if (!names.Add(name))
                    throw Fault(SnapshotFault.BlockEntry, $"{where} appears twice");
                var parsed = new BlockEntry(
                    name,
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[72..]),
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[80..]),
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[88..]),
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[96..]),
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[104..]),
                    BinaryPrimitives.ReadUInt32LittleEndian(entry[112..]),
                    BinaryPrimitives.ReadUInt32LittleEndian(entry[116..]),
                    BinaryPrimitives.ReadUInt64LittleEndian(entry[120..]));
                if (parsed.Size == 0 || parsed.Size % Page.Size != 0 || parsed.Size > SnapshotFormat.MaxBlockBytes)
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: size {parsed.Size} is absurd (a multiple of 4 KiB, at most {SnapshotFormat.MaxBlockBytes})");
                var bitmapBytes = SnapshotFormat.BitmapBytes(parsed.PageCount);
                if (parsed.BitmapLength != bitmapBytes)
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: bitmap length {parsed.BitmapLength} is not the {bitmapBytes} bytes its {parsed.PageCount} pages need");
                if (parsed.PagesOffset % SnapshotFormat.PageAreaAlignment != 0)
                    throw Fault(SnapshotFault.BlockEntry, $"{where}: pages offset {parsed.PagesOffset} is not 1 MiB aligned");
                AddRegion(parsed.PresentBitmapOffset, parsed.BitmapLength, $"the present-page bitmap of '{name}'", fields.FileLength);
                AddRegion(parsed.BalloonBitmapOffset, parsed.BitmapLength, $"the balloon bitmap of '{name}'", fields.FileLength);
                AddRegion(parsed.PageChecksumsOffset, SnapshotFormat.PageChecksumBytes(parsed.PageCount), $"the page checksums of '{name}'", fields.FileLength);
                AddRegion(parsed.PagesOffset, parsed.Size, $"the page area of '{name}'", fields.FileLength);
                entries[b] = parsed;
            }
            return entries;
        }

        private SnapshotBlock ReadBitmaps(int index, BlockEntry entry)
        {
            var present = ReadBitmap(entry, entry.PresentBitmapOffset, entry.PresentBitmapCrc, "present-page");
            var ballooned = ReadBitmap(entry, entry.BalloonBitmapOffset, entry.BalloonBitmapCrc, "balloon");
            if (present.CountCommon(ballooned) != 0)
            {
                foreach (var run in present.Runs())
                {
                    var position = run.Start;
                    if (ballooned.NextRun(ref position, run.End, out var both, out _))
                        throw Fault(SnapshotFault.BitmapConflict, $"block '{entry.Name}': page {both} is both present and ballooned");
                }
            }
            return new SnapshotBlock(index, entry, present, ballooned);
        }

        private PageSet ReadBitmap(BlockEntry entry, ulong offset, uint crc, string what)
        {
            var bytes = new byte[entry.BitmapLength];
            if (!SparseFile.ReadExactly(file, bytes, (long)offset))
                throw Fault(SnapshotFault.Truncated, $"truncated: the {what} bitmap of '{entry.Name}' ends early");
            var computed = Crc32C.Compute(bytes);
            if (computed != crc)
                throw Fault(SnapshotFault.BitmapChecksum, $"block '{entry.Name}': {what} bitmap checksum mismatch (stored 0x{crc:X8}, computed 0x{computed:X8})");
            _checksums++;
            var past = PageSet.FirstPast(bytes, entry.PageCount);
            if (past >= 0)
                throw Fault(SnapshotFault.BitmapPastBlock, $"block '{entry.Name}': the {what} bitmap claims page {past}, past its block ({entry.PageCount} pages)");
            var pages = new PageSet(entry.PageCount);
            pages.CopyFrom(bytes);
            return pages;
        }

        private (StateSection[] State, uint[] Crcs) ReadState(SnapshotHeader fields)
        {
            var area = new byte[fields.StateLength];
            if (!SparseFile.ReadExactly(file, area, (long)fields.StateOffset))
                throw Fault(SnapshotFault.Truncated, "truncated: the state area ends early");
            var sections = new StateSection[fields.StateCount];
            var crcs = new uint[fields.StateCount];
            var span = area.AsSpan();
            var strictUtf8 = new UTF8Encoding(encoderShouldEmitUTF8Identifier: false, throwOnInvalidBytes: true);
            for (var i = 0; i < sections.Length; i++)
            {
                var where = $"state section {i} (at state offset {area.Length - span.Length})";
                if (span.Length < SnapshotFormat.StateSectionHeaderSize)
                    throw Fault(SnapshotFault.StateLayout, $"{where}: its header runs past the end of the state area");
                var kind = (StateKind)BinaryPrimitives.ReadUInt16LittleEndian(span);
                var index = BinaryPrimitives.ReadUInt16LittleEndian(span[2..]);
                var nameLength = BinaryPrimitives.ReadUInt16LittleEndian(span[4..]);
                var reserved = BinaryPrimitives.ReadUInt16LittleEndian(span[6..]);
                var blobLength = BinaryPrimitives.ReadUInt32LittleEndian(span[8..]);
                var crc = BinaryPrimitives.ReadUInt32LittleEndian(span[12..]);
                if (nameLength > SnapshotFormat.MaxStateNameBytes || blobLength > SnapshotFormat.MaxStateBlobBytes)
                    throw Fault(SnapshotFault.StateLayout, $"{where}: name length {nameLength} or blob length {blobLength} is absurd");
                var size = SnapshotFormat.StateSectionHeaderSize + nameLength + (int)blobLength;
                if (size > span.Length)
                    throw Fault(SnapshotFault.StateLayout, $"{where}: its {size} bytes run past the end of the state area");
                var computed = Crc32C.Append(Crc32C.Compute(span[..12]), span[SnapshotFormat.StateSectionHeaderSize..size]);
                if (crc != computed)
                    throw Fault(SnapshotFault.StateChecksum, $"{where}: state checksum mismatch (stored 0x{crc:X8}, computed 0x{computed:X8})");
                _checksums++;
                if (!Enum.IsDefined(kind))
                    throw Fault(SnapshotFault.StateLayout, $"{where}: unknown kind {(ushort)kind}");
                if (reserved != 0)
                    throw Fault(SnapshotFault.StateLayout, $"{where}: reserved bytes are not zero");
                string name;
                try
                {
                    name = strictUtf8.GetString(span.Slice(SnapshotFormat.StateSectionHeaderSize, nameLength));
                }
                catch (DecoderFallbackException)
                {
                    throw Fault(SnapshotFault.StateLayout, $"{where}: the name is not valid UTF-8");
                }
                sections[i] = new StateSection(kind, index, name, span.Slice(SnapshotFormat.StateSectionHeaderSize + nameLength, (int)blobLength).ToArray());
                crcs[i] = crc;
                span = span[size..];
            }
            if (!span.IsEmpty)
                throw Fault(SnapshotFault.StateLayout, $"{span.Length} bytes in the state area after its {sections.Length} sections");
            return (sections, crcs);
        }
    }
}
