using System.Buffers.Binary;
using System.Runtime.InteropServices;

namespace Ferry.Kvm;

/// <summary>Writes device and vCPU state blobs: little-endian integers and raw blittable structs.</summary>
public sealed class StateWriter
{
    private readonly System.Buffers.ArrayBufferWriter<byte> _stream = new();

    public StateWriter U8(byte v)
    {
        System.Buffers.BuffersExtensions.Write(_stream, [v]);
        return this;
    }

    public StateWriter U16(ushort v)
    {
        Span<byte> b = stackalloc byte[2];
        BinaryPrimitives.WriteUInt16LittleEndian(b, v);
        System.Buffers.BuffersExtensions.Write(_stream, b);
        return this;
    }

    public StateWriter U32(uint v)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, v);
        System.Buffers.BuffersExtensions.Write(_stream, b);
        return this;
    }

    public StateWriter U64(ulong v)
    {
        Span<byte> b = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(b, v);
        System.Buffers.BuffersExtensions.Write(_stream, b);
        return this;
    }

    public StateWriter Raw<T>(in T value) where T : unmanaged
    {
        System.Buffers.BuffersExtensions.Write(_stream, MemoryMarshal.AsBytes(new ReadOnlySpan<T>(in value)));
        return this;
    }

    public StateWriter Bytes(ReadOnlySpan<byte> data)
    {
        System.Buffers.BuffersExtensions.Write(_stream, data);
        return this;
    }

    public byte[] ToArray() => _stream.WrittenSpan.ToArray();
}

/// <summary>
/// Reads state blobs as hostile input: every read is bounds-checked and fails with <see cref="InvalidDataException"/>
/// naming what was being read, never with an out-of-range access.
/// </summary>
public ref struct StateReader(ReadOnlySpan<byte> data, string what)
{
    private ReadOnlySpan<byte> _rest = data;

    public readonly bool AtEnd => _rest.IsEmpty;

    public ReadOnlySpan<byte> Bytes(int count)
    {
        if (count < 0 || count > _rest.Length)
            throw new InvalidDataException($"{what} truncated: needed {count} more bytes, {_rest.Length} left");
        var result = _rest[..count];
        _rest = _rest[count..];
        return result;
    }

    public byte U8() => Bytes(1)[0];

    public ushort U16() => BinaryPrimitives.ReadUInt16LittleEndian(Bytes(2));

    public uint U32() => BinaryPrimitives.ReadUInt32LittleEndian(Bytes(4));

    public ulong U64() => BinaryPrimitives.ReadUInt64LittleEndian(Bytes(8));

    public T Raw<T>() where T : unmanaged => MemoryMarshal.Read<T>(Bytes(Marshal.SizeOf<T>()));

    public readonly void End()
    {
        if (!_rest.IsEmpty)
            throw new InvalidDataException($"{what}: {_rest.Length} unexpected bytes at the end");
    }
}
