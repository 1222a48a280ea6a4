using System.Buffers.Binary;

namespace Ferry.Migration.Stream;

/// <summary>The postcopy records (docs/migration-stream.md, Postcopy).</summary>
public sealed partial class RecordWriter
{
    /// <summary>OWED_PAGES: bit i = page <paramref name="firstPage"/>+i is owed (the destination must not use what it holds for it).</summary>
    public void WriteOwedPages(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) => WriteBitmap(RecordType.OwedPages, block, firstPage, bitmap);

    /// <summary>POSTCOPY_START: the switch; on channel 0 after the owed bitmaps and the state, first on the others.</summary>
    public void WritePostcopyStart(ulong owedPages)
    {
        Span<byte> payload = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(payload, owedPages);
        Write(RecordType.PostcopyStart, payload, []);
    }
}
