using System.Buffers.Binary;

namespace Ferry.Fuzz;

/// <summary>Consumes a fuzz input as little-endian fields; past the end every field reads as 0.</summary>
internal ref struct FuzzInput(ReadOnlySpan<byte> data)
{
    private ReadOnlySpan<byte> _rest = data;

    public readonly bool AtEnd => _rest.IsEmpty;

    public byte U8() => Take(1) is { Length: 1 } b ? b[0] : (byte)0;

    public ushort U16() => Take(2) is { Length: 2 } b ? BinaryPrimitives.ReadUInt16LittleEndian(b) : (ushort)0;

    public uint U32() => Take(4) is { Length: 4 } b ? BinaryPrimitives.ReadUInt32LittleEndian(b) : 0;

    public ulong U64() => Take(8) is { Length: 8 } b ? BinaryPrimitives.ReadUInt64LittleEndian(b) : 0;

    /// <summary>Up to <paramref name="count"/> bytes (fewer at the end).</summary>
    public ReadOnlySpan<byte> Take(int count)
    {
        var n = Math.Min(count, _rest.Length);
        var result = _rest[..n];
        _rest = _rest[n..];
        return result;
    }
}

/// <summary>A harness found a bug: an input the code under test accepted or handled wrongly without throwing.</summary>
public sealed class FuzzOracleException : Exception
{
    public FuzzOracleException() { }

    public FuzzOracleException(string message) : base(message) { }

    public FuzzOracleException(string message, Exception inner) : base(message, inner) { }
}
