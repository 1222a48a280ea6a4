using System.Buffers.Binary;
using Ferry.Interop;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Tests.Synthetic;

namespace Ferry.Migration.Tests.Snapshot;

/// <summary>A temporary directory for snapshot files, removed afterwards.</summary>
public sealed class TempDir : IDisposable
{
    public TempDir() => Directory.CreateDirectory(Path);

    public string Path { get; } = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"ferry-snapshot-{Guid.NewGuid():N}");

    public string File(string name) => System.IO.Path.Combine(Path, name);

    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // Best effort.
        }
    }
}

/// <summary>Helpers shared by the snapshot tests: memory contents, allocation on disk, and surgery on files.</summary>
public static unsafe class SnapshotFixtures
{
    public const ulong MiB = 1UL << 20;

    /// <summary>A recognisable, never-zero pattern for a page of a block at a generation.</summary>
    public static void FillPages(RamBlock block, ulong firstPage, ulong pages, ulong generation)
    {
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(block.Mapping.GetSpan(firstPage * Page.Size, (int)(pages * Page.Size)));
        for (var i = 0; i < words.Length; i++)
            words[i] = unchecked(((firstPage * Page.Size) + (ulong)i * 8) * 0x9E3779B97F4A7C15UL + generation * 0xC2B2AE3D27D4EB4FUL + 1) | 1;
    }

    /// <summary>Bytes the file occupies on disk (st_blocks × 512), as `stat` reports.</summary>
    public static long AllocatedOnDisk(string path)
    {
        // A plain open(2): .NET's File.OpenHandle would take an advisory lock the writer holds exclusively.
        using var fd = SafeFd.FromResult(Libc.Open(path, Libc.O_RDONLY | Libc.O_CLOEXEC, 0), "open");
        StatBuffer stat;
        ErrnoException.Check(Libc.Fstat(fd.Fd, &stat), "fstat");
        return stat.Blocks * 512;
    }

    /// <summary>
    /// Every byte of the blocks equal. An <paramref name="actual"/> memfd block's holes (the kernel's SEEK_HOLE, not
    /// Ferry's bookkeeping) read zero without being faulted in; everything else is read (and so, in a memfd
    /// <paramref name="expected"/> block, allocated: measure allocation before calling).
    /// </summary>
    public static void AssertSameMemory(IReadOnlyList<RamBlock> expected, IReadOnlyList<RamBlock> actual)
    {
        for (var b = 0; b < expected.Count; b++)
        {
            var size = expected[b].Size;
            void Same(ulong offset, ulong length, bool zeroInActual)
            {
                var want = expected[b].Mapping.GetSpan(offset, (int)length);
                if (zeroInActual ? want.ContainsAnyExcept((byte)0) : !want.SequenceEqual(actual[b].Mapping.GetSpan(offset, (int)length)))
                {
                    var at = offset + (ulong)(zeroInActual ? want.IndexOfAnyExcept((byte)0) : want.CommonPrefixLength(actual[b].Mapping.GetSpan(offset, (int)length)));
                    Xunit.Assert.Fail($"block {expected[b].Name} differs at page {at / Page.Size} (offset 0x{at:X})");
                }
            }
            var extents = actual[b].IsFileMapped ? [(0UL, size)] : actual[b].DataExtents().ToArray();
            ulong position = 0;
            foreach (var (offset, length) in extents)
            {
                if (offset > position)
                    Same(position, offset - position, zeroInActual: true);
                Same(offset, length, zeroInActual: false);
                position = offset + length;
            }
            if (position < size)
                Same(position, size - position, zeroInActual: true);
        }
    }

    public static StateSection[] SampleState() =>
    [
        new(StateKind.Vcpu, 0, "vcpu", [.. Enumerable.Range(0, 5000).Select(i => (byte)i)]),
        new(StateKind.Vcpu, 1, "vcpu", [.. Enumerable.Range(0, 5000).Select(i => (byte)(i * 7))]),
        new(StateKind.Device, 0, "virtio-mmio", [1, 2, 3]),
        new(StateKind.Machine, 0, "empty", []),
    ];

    /// <summary>
    /// Saves blocks a test filled (a paused VM) into a finished snapshot file the way every save goes: the precopy
    /// engine's page scanner into a <see cref="SnapshotOutput"/> with <paramref name="threads"/> sinks.
    /// </summary>
    public static MigrationStats SaveThroughEngine(string path, IReadOnlyList<RamBlock> blocks, IReadOnlyList<StateSection> state, int threads, FixedBalloon? balloon = null)
    {
        using var output = new SnapshotOutput(path, threads);
        using var save = new PrecopyMigration(new PausedBlocks(blocks, state, balloon), new MigrationParameters(), new MigrationCapabilities());
        return save.Run(output);
    }
}

/// <summary>
/// The small snapshot the hostile-file and page checksum tests damage, in its own directory: ram-low (16 MiB,
/// pages 0..39 and 3000..3009 hold data) and ram-high (2 MiB + 12 KiB: 515 pages, a partial last word; pages
/// 512..514), four state sections, saved through the engine. The saved blocks are kept to compare restores with.
/// </summary>
public sealed class SavedSnapshot : IDisposable
{
    public SavedSnapshot()
    {
        Path = Dir.File("vm.snap");
        Saved = NewBlocks();
        SnapshotFixtures.FillPages(Saved[0], 0, 40, 1);
        SnapshotFixtures.FillPages(Saved[0], 3000, 10, 1);
        SnapshotFixtures.FillPages(Saved[1], 512, 3, 2);
        SnapshotFixtures.SaveThroughEngine(Path, Saved, SnapshotFixtures.SampleState(), threads: 2);
        File = new SnapshotSurgery(Path);
    }

    public TempDir Dir { get; } = new();

    public string Path { get; }

    public SnapshotSurgery File { get; }

    /// <summary>The memory the file holds.</summary>
    public RamBlock[] Saved { get; }

    /// <summary>Empty blocks like the saved ones, to restore into.</summary>
    public static RamBlock[] NewBlocks() =>
        [RamBlock.Create("ram-low", 0, 16 * SnapshotFixtures.MiB, 0), RamBlock.Create("ram-high", 4UL << 30, 2 * SnapshotFixtures.MiB + 3 * Page.Size, 1)];

    public void Dispose()
    {
        foreach (var block in Saved)
            block.Dispose();
        Dir.Dispose();
    }
}

/// <summary>
/// Reads and patches a snapshot at the offsets docs/snapshot-format.md gives (independently of the reader's code),
/// and can re-seal checksums so a test reaches the check behind them.
/// </summary>
public sealed class SnapshotSurgery(string path)
{
    // File header (docs/snapshot-format.md).
    public const int BlockCountOffset = 20;
    public const int TableOffsetOffset = 24;
    public const int TableLengthOffset = 32;
    public const int StateOffsetOffset = 40;
    public const int StateLengthOffset = 48;
    public const int StateCountOffset = 56;
    public const int FileLengthOffset = 64;
    public const int HeaderCrcOffset = 92;
    public const int MarkOffset = 96;

    // Block entry.
    public const int EntrySize = 144;
    public const int NameLengthOffset = 0;
    public const int NameOffset = 4;
    public const int SizeOffset = 72;
    public const int PresentBitmapOffset = 80;
    public const int BalloonBitmapOffset = 88;
    public const int BitmapLengthOffset = 96;
    public const int PagesOffsetOffset = 104;
    public const int PresentCrcOffset = 112;
    public const int BalloonCrcOffset = 116;
    public const int PageChecksumsOffsetOffset = 120;
    public const int EntryCrcOffset = 140;

    public string Path => path;

    public byte[] Read(long offset, int length)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read);
        var bytes = new byte[length];
        RandomAccess.Read(handle, bytes, offset);
        return bytes;
    }

    public void Write(long offset, ReadOnlySpan<byte> bytes)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.Write(handle, bytes, offset);
    }

    public uint U32(long offset) => BinaryPrimitives.ReadUInt32LittleEndian(Read(offset, 4));

    public ulong U64(long offset) => BinaryPrimitives.ReadUInt64LittleEndian(Read(offset, 8));

    public void SetU16(long offset, ushort value)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, value);
        Write(offset, b);
    }

    public void SetU32(long offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        Write(offset, b);
    }

    public void SetU64(long offset, ulong value)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, value);
        Write(offset, b);
    }

    public void Flip(long offset, byte mask = 0x40)
    {
        var b = Read(offset, 1);
        b[0] ^= mask;
        Write(offset, b);
    }

    public long Length => new FileInfo(path).Length;

    public void Truncate(long length)
    {
        using var handle = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
        RandomAccess.SetLength(handle, length);
    }

    public long TableOffset => (long)U64(TableOffsetOffset);

    public long StateOffset => (long)U64(StateOffsetOffset);

    public long StateLength => (long)U64(StateLengthOffset);

    public long Entry(int block) => TableOffset + block * EntrySize;

    public long EntryField(int block, int field) => Entry(block) + field;

    public long PresentBitmap(int block) => (long)U64(EntryField(block, PresentBitmapOffset));

    public long BalloonBitmap(int block) => (long)U64(EntryField(block, BalloonBitmapOffset));

    public long BitmapLength(int block) => (long)U64(EntryField(block, BitmapLengthOffset));

    public long PagesOffset(int block) => (long)U64(EntryField(block, PagesOffsetOffset));

    /// <summary>File offset of page 0's CRC32C in the block's page checksum area (4 bytes per page).</summary>
    public long PageChecksums(int block) => (long)U64(EntryField(block, PageChecksumsOffsetOffset));

    /// <summary>File offset of a page's slot.</summary>
    public long PageSlot(int block, ulong page) => PagesOffset(block) + (long)page * Page.Size;

    /// <summary>File offset of a page's checksum entry.</summary>
    public long PageChecksum(int block, ulong page) => PageChecksums(block) + (long)page * 4;

    /// <summary>Recomputes a bitmap's checksum into its entry (and the entry's own checksum).</summary>
    public void ResealBitmaps(int block)
    {
        var length = (int)BitmapLength(block);
        SetU32(EntryField(block, PresentCrcOffset), Crc32C.Compute(Read(PresentBitmap(block), length)));
        SetU32(EntryField(block, BalloonCrcOffset), Crc32C.Compute(Read(BalloonBitmap(block), length)));
        ResealEntry(block);
    }

    public void ResealEntry(int block) =>
        SetU32(EntryField(block, EntryCrcOffset), Crc32C.Compute(Read(Entry(block), EntryCrcOffset)));

    /// <summary>Recomputes the header checksum and a matching completion mark.</summary>
    public void ResealHeader()
    {
        var crc = Crc32C.Compute(Read(0, HeaderCrcOffset));
        SetU32(HeaderCrcOffset, crc);
        var mark = new byte[16];
        "COMPLETE"u8.CopyTo(mark);
        BinaryPrimitives.WriteUInt32LittleEndian(mark.AsSpan(8), crc);
        BinaryPrimitives.WriteUInt32LittleEndian(mark.AsSpan(12), Crc32C.Compute(mark.AsSpan(0, 12)));
        Write(MarkOffset, mark);
    }
}
