using System.Buffers.Binary;

namespace Ferry.Migration.Stream;

/// <summary>The postcopy records (docs/migration-stream.md, Postcopy); OWED_PAGES is decoded with BALLOON_BITMAP.</summary>
public sealed partial class RecordReader
{
    /// <summary>POSTCOPY_START: its payload is the number of owed pages (in <see cref="Record.PageCount"/>).</summary>
    private static Record DecodePostcopyStart(ReadOnlySpan<byte> payload, RecordWhere where)
    {
        RequireLength(payload, 8, 8, where);
        return new Record(RecordType.PostcopyStart, -1, 0, BinaryPrimitives.ReadUInt64LittleEndian(payload), ReadOnlyMemory<byte>.Empty);
    }
}
