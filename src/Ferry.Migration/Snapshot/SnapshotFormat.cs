using Ferry.Kvm;
using System.Buffers.Binary;
using System.Text;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Snapshot;

/// <summary>
/// Constants and limits of the snapshot file, version 2 (docs/snapshot-format.md). Every page of a RAM block lives
/// at a fixed offset (the fixed-offset "mapped-ram" file design): the file never grows with passes, and pages are written and read in
/// parallel with positional I/O. Every page has a CRC32C at a fixed offset too, in its block's page checksum area.
/// All integers are little-endian.
/// </summary>
public static class SnapshotFormat
{
    public static ReadOnlySpan<byte> Magic => "FERRYSNP"u8;

    /// <summary>The completion mark's magic; the mark is the last thing a writer puts in the file.</summary>
    public static ReadOnlySpan<byte> CompletionMagic => "COMPLETE"u8;

    public const uint Version = 2;

    /// <summary>The last version without page checksums: refused with a message saying so.</summary>
    public const uint VersionWithoutPageChecksums = 1;

    public const int HeaderSize = 128;
    /// <summary>The header checksum covers bytes [0, HeaderCrcOffset).</summary>
    public const int HeaderCrcOffset = 92;
    public const int CompletionMarkOffset = 96;
    public const int CompletionMarkSize = 16;

    public const int BlockEntrySize = 144;
    public const int BlockEntryCrcOffset = 140;
    public const int MaxBlocks = 64;
    public const int MaxNameBytes = 64;

    /// <summary>Bytes of one page's entry in its block's page checksum area: the page slot's CRC32C.</summary>
    public const int PageChecksumSize = 4;

    /// <summary>The largest RAM block a file holds (1 TiB; Ferry's guests top out at 128 GiB). Bounds the bitmaps a reader allocates.</summary>
    public const ulong MaxBlockBytes = 1UL << 40;

    /// <summary>Every page area starts on a 1 MiB boundary (as the fixed-offset file design asks), so it can be mapped straight from the file.</summary>
    public const ulong PageAreaAlignment = 1UL << 20;

    public const int StateSectionHeaderSize = 16;
    public const int MaxStateSections = 4096;
    public const int MaxStateNameBytes = 64;
    public const int MaxStateBlobBytes = StreamLimits.MaxStateBlobBytes;
    public const ulong MaxStateAreaBytes = 256UL << 20;

    /// <summary>Bytes of one bitmap (present or ballooned) for a block of <paramref name="pageCount"/> pages: whole 64-bit words.</summary>
    public static ulong BitmapBytes(ulong pageCount) => (pageCount + 63) / 64 * 8;

    /// <summary>Bytes of a block's page checksum area: one CRC32C per page.</summary>
    public static ulong PageChecksumBytes(ulong pageCount) => pageCount * PageChecksumSize;

    internal static ulong AlignUp(ulong value, ulong alignment) => (value + alignment - 1) / alignment * alignment;
}

/// <summary>What is wrong with a snapshot file; the message of <see cref="SnapshotFormatException"/> says where.</summary>
public enum SnapshotFault
{
    /// <summary>The file could not be opened or read at all.</summary>
    Io = 1,
    Truncated,
    TrailingData,
    BadMagic,
    UnsupportedVersion,
    HeaderChecksum,
    BadHeader,
    NotFinished,
    CompletionMark,
    BlockCount,
    BlockEntry,
    BlockEntryChecksum,
    OutOfBounds,
    Overlap,
    BitmapChecksum,
    BitmapPastBlock,
    BitmapConflict,
    /// <summary>A present page's contents do not match its CRC32C (the page or its checksum entry is damaged).</summary>
    PageChecksum,
    StateLayout,
    StateChecksum,
    /// <summary>The snapshot's RAM blocks are not the VM's (names or sizes).</summary>
    BlockMismatch,
}

/// <summary>
/// A snapshot file the reader refuses (or cannot read): the one exception type <see cref="SnapshotFile"/> throws.
/// The message names the file, the fault and where it is; <see cref="Fault"/> classifies it.
/// </summary>
public sealed class SnapshotFormatException : Exception
{
    public SnapshotFormatException() { }

    public SnapshotFormatException(string message) : base(message) { }

    public SnapshotFormatException(string message, Exception inner) : base(message, inner) { }

    public SnapshotFormatException(SnapshotFault fault, string message, Exception? inner = null) : base(message, inner) => Fault = fault;

    public SnapshotFault Fault { get; }
}

/// <summary>The file header's fields (bytes 0..91; the checksum and the completion mark follow).</summary>
internal readonly record struct SnapshotHeader(
    uint BlockCount,
    ulong BlockTableOffset,
    ulong BlockTableLength,
    ulong StateOffset,
    ulong StateLength,
    uint StateCount,
    ulong FileLength)
{
    /// <summary>Writes the 128-byte header with its checksum and no completion mark; returns the checksum.</summary>
    public uint Encode(Span<byte> header)
    {
        header[..SnapshotFormat.HeaderSize].Clear();
        SnapshotFormat.Magic.CopyTo(header);
        BinaryPrimitives.WriteUInt32LittleEndian(header[8..], SnapshotFormat.Version);
        BinaryPrimitives.WriteUInt32LittleEndian(header[12..], SnapshotFormat.HeaderSize);
        BinaryPrimitives.WriteUInt32LittleEndian(header[16..], Page.Size);
        BinaryPrimitives.WriteUInt32LittleEndian(header[20..], BlockCount);
        BinaryPrimitives.WriteUInt64LittleEndian(header[24..], BlockTableOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(header[32..], BlockTableLength);
        BinaryPrimitives.WriteUInt64LittleEndian(header[40..], StateOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(header[48..], StateLength);
        BinaryPrimitives.WriteUInt32LittleEndian(header[56..], StateCount);
        // 60: flags (0). 64: file length. 72..91: reserved (0).
        BinaryPrimitives.WriteUInt64LittleEndian(header[64..], FileLength);
        var crc = Crc32C.Compute(header[..SnapshotFormat.HeaderCrcOffset]);
        BinaryPrimitives.WriteUInt32LittleEndian(header[SnapshotFormat.HeaderCrcOffset..], crc);
        return crc;
    }

    /// <summary>
    /// The 16-byte completion mark: the magic, a copy of the header checksum (so a mark belongs to exactly one
    /// header) and a checksum of those 12 bytes (so a torn mark is not taken for one).
    /// </summary>
    public static void EncodeCompletionMark(uint headerCrc, Span<byte> mark)
    {
        SnapshotFormat.CompletionMagic.CopyTo(mark);
        BinaryPrimitives.WriteUInt32LittleEndian(mark[8..], headerCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(mark[12..], Crc32C.Compute(mark[..12]));
    }
}

/// <summary>One entry of the block table (128 bytes).</summary>
internal readonly record struct BlockEntry(
    string Name,
    ulong Size,
    ulong PresentBitmapOffset,
    ulong BalloonBitmapOffset,
    ulong BitmapLength,
    ulong PagesOffset,
    uint PresentBitmapCrc,
    uint BalloonBitmapCrc,
    ulong PageChecksumsOffset)
{
    public ulong PageCount => Size >> Page.Shift;

    public void Encode(Span<byte> entry)
    {
        entry[..SnapshotFormat.BlockEntrySize].Clear();
        var name = Encoding.UTF8.GetBytes(Name);
        BinaryPrimitives.WriteUInt16LittleEndian(entry, (ushort)name.Length);
        name.CopyTo(entry[4..]);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[72..], Size);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[80..], PresentBitmapOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[88..], BalloonBitmapOffset);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[96..], BitmapLength);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[104..], PagesOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[112..], PresentBitmapCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[116..], BalloonBitmapCrc);
        BinaryPrimitives.WriteUInt64LittleEndian(entry[120..], PageChecksumsOffset);
        BinaryPrimitives.WriteUInt32LittleEndian(entry[SnapshotFormat.BlockEntryCrcOffset..], Crc32C.Compute(entry[..SnapshotFormat.BlockEntryCrcOffset]));
    }
}

/// <summary>
/// Where a writer puts everything for a set of blocks: the header page, the block table, every block's two
/// bitmaps and its page checksum area (each 4 KiB aligned), then the page areas (each 1 MiB aligned, in block
/// order), then the state area.
/// Metadata is all in front of the first page area, so it can never collide with a page slot.
/// </summary>
internal sealed class SnapshotLayout
{
    private const ulong MetadataAlignment = 4096;

    private SnapshotLayout(ulong tableOffset, BlockEntry[] entries, ulong stateOffset)
    {
        BlockTableOffset = tableOffset;
        Entries = entries;
        StateOffset = stateOffset;
    }

    public ulong BlockTableOffset { get; }

    public ulong BlockTableLength => (ulong)Entries.Length * SnapshotFormat.BlockEntrySize;

    /// <summary>Entries with offsets filled in and bitmap checksums 0 (they are known only at the end).</summary>
    public BlockEntry[] Entries { get; }

    /// <summary>The end of the last page area, where the state area starts.</summary>
    public ulong StateOffset { get; }

    public static SnapshotLayout Compute(IReadOnlyList<BlockDescriptor> blocks)
    {
        var tableOffset = MetadataAlignment; // the header has page 0 to itself
        var position = SnapshotFormat.AlignUp(tableOffset + (ulong)blocks.Count * SnapshotFormat.BlockEntrySize, MetadataAlignment);
        var bitmaps = new (ulong Present, ulong Balloon, ulong Length, ulong Checksums)[blocks.Count];
        for (var i = 0; i < blocks.Count; i++)
        {
            var pages = blocks[i].Size >> Page.Shift;
            var length = SnapshotFormat.BitmapBytes(pages);
            var present = position;
            var balloon = SnapshotFormat.AlignUp(present + length, MetadataAlignment);
            var checksums = SnapshotFormat.AlignUp(balloon + length, MetadataAlignment);
            position = SnapshotFormat.AlignUp(checksums + SnapshotFormat.PageChecksumBytes(pages), MetadataAlignment);
            bitmaps[i] = (present, balloon, length, checksums);
        }
        var entries = new BlockEntry[blocks.Count];
        for (var i = 0; i < blocks.Count; i++)
        {
            var pagesOffset = SnapshotFormat.AlignUp(position, SnapshotFormat.PageAreaAlignment);
            entries[i] = new BlockEntry(blocks[i].Name, blocks[i].Size, bitmaps[i].Present, bitmaps[i].Balloon, bitmaps[i].Length, pagesOffset, 0, 0, bitmaps[i].Checksums);
            position = pagesOffset + blocks[i].Size;
        }
        return new SnapshotLayout(tableOffset, entries, position);
    }
}
