using System.Buffers.Binary;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Microsoft.Win32.SafeHandles;

namespace Ferry.Migration.Snapshot;

/// <summary>
/// Writes a snapshot file (docs/snapshot-format.md). Page i of block b always goes to the same slot, so a page
/// written again in a later pass overwrites its old copy and the file never grows with passes. Pages never written
/// stay holes: the file is created at its full size with ftruncate and is sparse.
///
/// <see cref="WritePages"/>, <see cref="MarkAbsent"/> and <see cref="SetBallooned"/> are positional and may be
/// called from any number of threads at once. Calls that touch the same page must be ordered by the caller (the
/// precopy engine pins each 2 MiB chunk to one thread); two concurrent writes of one page leave one of the two,
/// with its own checksum (a page and its checksum entry are written under their 2 MiB chunk's lock).
/// <see cref="Finish"/> runs once, after every other call has returned: it writes the bitmaps and the state,
/// syncs, and only then writes the completion mark and syncs again. A file without the mark (a save that failed
/// or is still running) is refused by <see cref="SnapshotFile.Open"/>.
/// </summary>
public sealed class SnapshotWriter : IDisposable
{
    private const int Open = 0, Finishing = 1, Finished = 2, Disposed = 3;

    private readonly SafeFileHandle _file;
    private readonly BlockEntry[] _entries;
    private readonly PageSet[] _present;   // pages whose slot holds their latest contents
    private readonly PageSet[] _ballooned; // pages in the trusted balloon (contents not kept)
    private readonly ulong _tableOffset, _stateOffset;
    private readonly Lock[] _chunkLocks = [.. Enumerable.Range(0, 256).Select(_ => new Lock())];
    private int _state;
    private bool _metadataWritten;
    private int _sealing;
    private uint _headerCrc;
    private int _inFlight;
    private volatile string? _failure;
    private long _pagesWritten, _bytesWritten, _pagesPunched;

    private SnapshotWriter(string path, SafeFileHandle file, SnapshotLayout layout)
    {
        Path = path;
        _file = file;
        _entries = layout.Entries;
        _tableOffset = layout.BlockTableOffset;
        _stateOffset = layout.StateOffset;
        _present = [.. _entries.Select(e => new PageSet(e.PageCount))];
        _ballooned = [.. _entries.Select(e => new PageSet(e.PageCount))];
    }

    public string Path { get; }

    /// <summary>The blocks in file order (the indices every call takes).</summary>
    public IReadOnlyList<BlockDescriptor> Blocks => [.. _entries.Select(e => new BlockDescriptor(e.Name, e.Size))];

    /// <summary>Page writes so far, rewrites of the same slot included.</summary>
    public long PagesWritten => Interlocked.Read(ref _pagesWritten);

    /// <summary>Page bytes written so far, rewrites included (metadata and state not counted).</summary>
    public long BytesWritten => Interlocked.Read(ref _bytesWritten);

    /// <summary>Slots punched because a page written earlier became zero, absent or ballooned.</summary>
    public long PagesPunched => Interlocked.Read(ref _pagesPunched);

    /// <summary>Pages whose slot currently holds data.</summary>
    public long PresentPages => _present.Sum(set => (long)set.Count());

    public bool IsFinished => Volatile.Read(ref _state) == Finished;

    public static SnapshotWriter Create(string path, IReadOnlyList<RamBlock> blocks) =>
        Create(path, [.. blocks.Select(b => new BlockDescriptor(b.Name, b.Size))]);

    /// <summary>
    /// Creates the file at <paramref name="path"/>, truncating whatever was there (a finished snapshot included:
    /// callers that must keep the old one until the new one is finished write to a temporary path and rename it
    /// after <see cref="Finish"/>). The header and block table are written at once, so a crash leaves a file the
    /// reader recognises as unfinished.
    /// </summary>
    public static SnapshotWriter Create(string path, IReadOnlyList<BlockDescriptor> blocks)
    {
        ValidateBlocks(blocks);
        if (!BitConverter.IsLittleEndian)
            throw new PlatformNotSupportedException("snapshot bitmaps are written as little-endian words");
        var layout = SnapshotLayout.Compute(blocks);
        // FileShare.None takes an exclusive advisory lock: two saves into one file refuse each other.
        var file = File.OpenHandle(path, FileMode.Create, FileAccess.ReadWrite, FileShare.None);
        try
        {
            var writer = new SnapshotWriter(path, file, layout);
            // Full size up front: every slot exists (as a hole) and no page write ever extends the file.
            RandomAccess.SetLength(file, (long)layout.StateOffset);
            writer.WriteMetadata(stateLength: 0, stateCount: 0);
            return writer;
        }
        catch
        {
            file.Dispose();
            throw;
        }
    }

    private static void ValidateBlocks(IReadOnlyList<BlockDescriptor> blocks)
    {
        if (blocks.Count is 0 or > SnapshotFormat.MaxBlocks)
            throw new ArgumentException($"{blocks.Count} RAM blocks: a snapshot holds 1..{SnapshotFormat.MaxBlocks}", nameof(blocks));
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var block in blocks)
        {
            var nameBytes = Encoding.UTF8.GetByteCount(block.Name);
            if (nameBytes is 0 or > SnapshotFormat.MaxNameBytes)
                throw new ArgumentException($"RAM block name '{block.Name}' is {nameBytes} bytes (1..{SnapshotFormat.MaxNameBytes})", nameof(blocks));
            if (!names.Add(block.Name))
                throw new ArgumentException($"two RAM blocks are named '{block.Name}'", nameof(blocks));
            if (block.Size == 0 || block.Size % Page.Size != 0 || block.Size > SnapshotFormat.MaxBlockBytes)
                throw new ArgumentException($"RAM block '{block.Name}': size {block.Size} is not a multiple of 4 KiB in 4 KiB..1 TiB", nameof(blocks));
        }
    }

    /// <summary>
    /// Writes whole pages into their slots: <paramref name="pages"/> holds page <paramref name="firstPage"/> and
    /// the ones after it. Each page's CRC32C goes into its entry of the block's page checksum area, right after the
    /// page (one write for the run's pages, one for their checksums, per 2 MiB chunk). The bits are set after the
    /// data is written. Thread-safe.
    ///
    /// The checksums are of the bytes as this call read them. A live save reads a running guest's memory: a page
    /// the guest changes under the write may land in the file unlike its checksum, but the guest's write also
    /// marks it dirty, so a later pass (at the latest the last one, with the guest paused) writes it again, with a
    /// checksum that matches. Only the file as <see cref="Finish"/> leaves it has to agree with itself.
    /// </summary>
    public void WritePages(int block, ulong firstPage, ReadOnlySpan<byte> pages)
    {
        if (pages.IsEmpty || pages.Length % Page.Size != 0)
            throw new ArgumentException($"{pages.Length} bytes is not a positive number of whole pages", nameof(pages));
        var count = (ulong)pages.Length / Page.Size;
        var entry = CheckRange(block, firstPage, count);
        Enter();
        try
        {
            Span<uint> crcs = stackalloc uint[Page.ChunkPages];
            for (var page = firstPage; page < firstPage + count;)
            {
                // The pages of one 2 MiB chunk, with their checksums computed outside the chunk's lock.
                var n = (int)Math.Min(firstPage + count - page, Page.ChunkPages - page % Page.ChunkPages);
                var data = pages.Slice((int)(page - firstPage) * Page.Size, n * Page.Size);
                Crc32C.ComputeEach(data, Page.Size, crcs);
                lock (_chunkLocks[(int)((page >> Page.ChunkShift) + (ulong)block * 97) & (256 - 1)])
                {
                    RandomAccess.Write(_file, data, (long)(entry.PagesOffset + page * Page.Size));
                    RandomAccess.Write(_file, MemoryMarshal.AsBytes(crcs[..n]), (long)(entry.PageChecksumsOffset + page * SnapshotFormat.PageChecksumSize));
                }
                page += (ulong)n;
            }
            _present[block].AddRange(firstPage, count);
            // A page with data is not in the balloon, whatever an earlier bitmap said.
            _ballooned[block].RemoveRange(firstPage, count);
            Interlocked.Add(ref _pagesWritten, (long)count);
            Interlocked.Add(ref _bytesWritten, pages.Length);
        }
        catch (Exception e)
        {
            Fail(e);
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Pages that hold nothing any more (they became zero, or were discarded): their bits are cleared and the slots
    /// that held an older copy are punched, so the reader never loads stale contents and the disk space comes back.
    /// Slots never written are holes already and cost nothing. Thread-safe.
    /// </summary>
    public void MarkAbsent(int block, ulong firstPage, ulong count)
    {
        if (count == 0)
            return;
        var entry = CheckRange(block, firstPage, count);
        Enter();
        try
        {
            PunchCleared(_present[block], entry, firstPage, count);
        }
        catch (Exception e)
        {
            Fail(e);
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// The balloon's truth for <c>bitmap.Length * 8</c> pages from <paramref name="firstPage"/> (a multiple of 64):
    /// a set bit is a page in the balloon (absent, its slot punched), a clear bit a page that is not (its slot is
    /// left as it is). The same contract as the stream's BALLOON_BITMAP record. Thread-safe.
    /// </summary>
    public void SetBallooned(int block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        if (firstPage % 64 != 0 || bitmap.Length % 8 != 0)
            throw new ArgumentException($"a balloon bitmap covers whole 64-page words (first page {firstPage}, {bitmap.Length} bytes)", nameof(bitmap));
        if (bitmap.IsEmpty)
            return;
        var entry = CheckBlock(block);
        var words = (ulong)bitmap.Length / 8;
        var firstWord = firstPage / 64;
        if (firstWord > (ulong)PageSet.WordsFor(entry.PageCount) || words > (ulong)PageSet.WordsFor(entry.PageCount) - firstWord)
            throw new ArgumentOutOfRangeException(nameof(firstPage), $"balloon bitmap for pages {firstPage}..{firstPage + words * 64 - 1} runs past '{entry.Name}'");
        if (PageSet.FirstPast(bitmap, entry.PageCount - firstPage) >= 0)
            throw new ArgumentOutOfRangeException(nameof(bitmap), $"balloon bitmap claims pages past the end of '{entry.Name}'");
        Enter();
        try
        {
            _ballooned[block].ReplaceWords(firstPage, bitmap);
            // Punch each run of ballooned pages that had a slot written.
            foreach (var run in PageSet.RunsIn(bitmap, firstPage))
                PunchCleared(_present[block], entry, run.Start, run.Length);
        }
        catch (Exception e)
        {
            Fail(e);
            throw;
        }
        finally
        {
            Exit();
        }
    }

    private void PunchCleared(PageSet present, BlockEntry entry, ulong firstPage, ulong count)
    {
        var target = new PunchTarget(_file, entry.PagesOffset);
        var punched = present.RemoveRange(firstPage, count, ref target, static (ref PunchTarget t, ulong page, ulong pages) =>
            SparseFile.PunchHole(t.File, (long)(t.PagesOffset + page * Page.Size), (long)(pages * Page.Size)));
        if (punched != 0)
            Interlocked.Add(ref _pagesPunched, (long)punched);
    }

    private readonly record struct PunchTarget(SafeFileHandle File, ulong PagesOffset);

    /// <summary>
    /// Pushes the pages written so far to disk (fsync) without finishing the file. Between precopy passes this keeps
    /// the dirty page cache small, so the final sync, which a paused guest waits for, covers only the last pass; and
    /// a pass's measured bandwidth is the disk's, not the page cache's. Thread-safe.
    /// </summary>
    public void Flush()
    {
        Enter();
        try
        {
            RandomAccess.FlushToDisk(_file);
        }
        catch (Exception e)
        {
            Fail(e);
            throw;
        }
        finally
        {
            Exit();
        }
    }

    /// <summary>
    /// Ends the file: <see cref="WriteFinalMetadata"/>, then <see cref="Seal"/>. Every write and mark call must have
    /// returned.
    /// </summary>
    public void Finish(IReadOnlyList<StateSection> state)
    {
        WriteFinalMetadata(state);
        Seal();
    }

    /// <summary>
    /// The last writes: the state sections (each with its checksum), the bitmaps, the block table and the header,
    /// into the page cache. No page can be written after this. The file is not yet complete: <see cref="Seal"/>
    /// makes it so, and may run while the saved guest already runs on (nothing it does can reach the file now).
    /// </summary>
    public void WriteFinalMetadata(IReadOnlyList<StateSection> state)
    {
        ValidateState(state);
        if (Interlocked.CompareExchange(ref _state, Finishing, Open) != Open)
            throw new InvalidOperationException($"snapshot {Path} is already finished (or being finished) or closed");
        // Calls that entered before the state changed are let to complete; new ones are refused.
        var spin = new SpinWait();
        while (Volatile.Read(ref _inFlight) != 0)
            spin.SpinOnce();
        if (_failure is { } failure)
            throw new InvalidOperationException($"snapshot {Path} cannot be finished: an earlier write failed ({failure})");

        var stateArea = EncodeState(state);
        if (stateArea.Length != 0)
            RandomAccess.Write(_file, stateArea, (long)_stateOffset);
        _headerCrc = WriteMetadata((ulong)stateArea.Length, (uint)state.Count);
        Volatile.Write(ref _metadataWritten, true);
    }

    /// <summary>
    /// fsync; then the completion mark (which names this header's checksum); then fsync again. Only after this can
    /// the file be taken for a snapshot: a crash anywhere before leaves a file the reader refuses.
    /// </summary>
    public void Seal()
    {
        if (!Volatile.Read(ref _metadataWritten) || Interlocked.CompareExchange(ref _sealing, 1, 0) != 0)
            throw new InvalidOperationException($"snapshot {Path}: seal comes once, after the final metadata");
        RandomAccess.FlushToDisk(_file);
        Span<byte> mark = stackalloc byte[SnapshotFormat.CompletionMarkSize];
        SnapshotHeader.EncodeCompletionMark(_headerCrc, mark);
        RandomAccess.Write(_file, mark, SnapshotFormat.CompletionMarkOffset);
        RandomAccess.FlushToDisk(_file);
        Volatile.Write(ref _state, Finished);
    }

    /// <summary>Bitmaps, block table and header (no completion mark); returns the header checksum.</summary>
    private uint WriteMetadata(ulong stateLength, uint stateCount)
    {
        var table = new byte[_entries.Length * SnapshotFormat.BlockEntrySize];
        for (var b = 0; b < _entries.Length; b++)
        {
            var present = _present[b].Bytes;
            var ballooned = _ballooned[b].Bytes;
            WriteSparse(present, _entries[b].PresentBitmapOffset);
            WriteSparse(ballooned, _entries[b].BalloonBitmapOffset);
            var entry = _entries[b] with { PresentBitmapCrc = Crc32C.Compute(present), BalloonBitmapCrc = Crc32C.Compute(ballooned) };
            entry.Encode(table.AsSpan(b * SnapshotFormat.BlockEntrySize));
        }
        RandomAccess.Write(_file, table, (long)_tableOffset);
        var header = new SnapshotHeader(
            (uint)_entries.Length, _tableOffset, (ulong)table.Length, _stateOffset, stateLength, stateCount, _stateOffset + stateLength);
        Span<byte> bytes = stackalloc byte[SnapshotFormat.HeaderSize];
        var crc = header.Encode(bytes);
        RandomAccess.Write(_file, bytes, 0);
        return crc;
    }

    /// <summary>
    /// Writes a bitmap but skips its all-zero 4 KiB pieces: the region starts as a hole and nothing else writes
    /// it, so a skipped piece reads as the zeros it holds, and an empty bitmap (the balloon's, usually) costs no disk.
    /// </summary>
    private void WriteSparse(ReadOnlySpan<byte> bitmap, ulong offset)
    {
        const int Piece = 4096;
        for (var at = 0; at < bitmap.Length;)
        {
            var piece = bitmap.Slice(at, Math.Min(Piece, bitmap.Length - at));
            if (piece.ContainsAnyExcept((byte)0))
                RandomAccess.Write(_file, piece, (long)offset + at);
            at += piece.Length;
        }
    }

    private static void ValidateState(IReadOnlyList<StateSection> state)
    {
        if (state.Count > SnapshotFormat.MaxStateSections)
            throw new ArgumentException($"{state.Count} state sections (at most {SnapshotFormat.MaxStateSections})", nameof(state));
        ulong total = 0;
        foreach (var section in state)
        {
            if (!Enum.IsDefined(section.Kind))
                throw new ArgumentException($"state section '{section.Name}': unknown kind {(ushort)section.Kind}", nameof(state));
            if (Encoding.UTF8.GetByteCount(section.Name) > SnapshotFormat.MaxStateNameBytes)
                throw new ArgumentException($"state section name '{section.Name}' is over {SnapshotFormat.MaxStateNameBytes} bytes", nameof(state));
            if (section.Blob.Length > SnapshotFormat.MaxStateBlobBytes)
                throw new ArgumentException($"state section '{section.Name}' is {section.Blob.Length} bytes (at most {SnapshotFormat.MaxStateBlobBytes})", nameof(state));
            total += (ulong)(SnapshotFormat.StateSectionHeaderSize + Encoding.UTF8.GetByteCount(section.Name) + section.Blob.Length);
        }
        if (total > SnapshotFormat.MaxStateAreaBytes)
            throw new ArgumentException($"the state is {total} bytes (at most {SnapshotFormat.MaxStateAreaBytes})", nameof(state));
    }

    /// <summary>The state area: per section a 16-byte header (kind, index, name length, blob length, CRC), the name, the blob.</summary>
    internal static byte[] EncodeState(IReadOnlyList<StateSection> state)
    {
        var length = state.Sum(s => SnapshotFormat.StateSectionHeaderSize + Encoding.UTF8.GetByteCount(s.Name) + s.Blob.Length);
        var area = new byte[length];
        var at = 0;
        foreach (var section in state)
        {
            var name = Encoding.UTF8.GetBytes(section.Name);
            var span = area.AsSpan(at, SnapshotFormat.StateSectionHeaderSize + name.Length + section.Blob.Length);
            BinaryPrimitives.WriteUInt16LittleEndian(span, (ushort)section.Kind);
            BinaryPrimitives.WriteUInt16LittleEndian(span[2..], section.Index);
            BinaryPrimitives.WriteUInt16LittleEndian(span[4..], (ushort)name.Length);
            BinaryPrimitives.WriteUInt32LittleEndian(span[8..], (uint)section.Blob.Length);
            name.CopyTo(span[16..]);
            section.Blob.CopyTo(span[(16 + name.Length)..]);
            var crc = Crc32C.Append(Crc32C.Compute(span[..12]), span[16..]);
            BinaryPrimitives.WriteUInt32LittleEndian(span[12..], crc);
            at += span.Length;
        }
        return area;
    }

    private BlockEntry CheckBlock(int block)
    {
        if ((uint)block >= (uint)_entries.Length)
            throw new ArgumentOutOfRangeException(nameof(block), $"block {block} is not one of the snapshot's {_entries.Length}");
        return _entries[block];
    }

    private BlockEntry CheckRange(int block, ulong firstPage, ulong count)
    {
        var entry = CheckBlock(block);
        if (firstPage >= entry.PageCount || count > entry.PageCount - firstPage)
            throw new ArgumentOutOfRangeException(nameof(firstPage), $"pages {firstPage}..+{count} run past '{entry.Name}' ({entry.PageCount} pages)");
        return entry;
    }

    private void Enter()
    {
        // Counted before the state is read, so Finish (which changes the state, then waits for the count) either
        // sees this call or this call sees Finish.
        Interlocked.Increment(ref _inFlight);
        var state = Volatile.Read(ref _state);
        if (state != Open || _failure is not null)
        {
            Interlocked.Decrement(ref _inFlight);
            if (_failure is { } failure)
                throw new InvalidOperationException($"snapshot {Path}: an earlier write failed ({failure})");
            throw new InvalidOperationException($"snapshot {Path} is {(state == Disposed ? "closed" : "finished")}: no more pages can be written");
        }
    }

    private void Exit() => Interlocked.Decrement(ref _inFlight);

    /// <summary>A failed write may have left a slot half-written under a set bit: the file must never be finished.</summary>
    private void Fail(Exception e)
    {
        if (e is not ArgumentException)
            _failure ??= e.Message;
    }

    /// <summary>Closes the file. Without <see cref="Finish"/> it stays unfinished (refused by the reader), not deleted.</summary>
    public void Dispose()
    {
        Interlocked.CompareExchange(ref _state, Disposed, Open);
        _file.Dispose();
    }
}
