using System.Runtime.CompilerServices;

namespace Ferry.Kvm;

/// <summary>
/// Guest RAM as a set of named blocks. Every VMM access goes through here, bounds-checked against the blocks;
/// every write is recorded in the block's VMM dirty bitmap so a dirty-log sync sees it.
/// </summary>
public sealed unsafe class GuestMemory : IDisposable
{
    private readonly RamBlock[] _blocks;

    public GuestMemory(IEnumerable<RamBlock> blocks)
    {
        _blocks = [.. blocks.OrderBy(b => b.GuestPhysicalAddress)];
        for (var i = 1; i < _blocks.Length; i++)
        {
            if (_blocks[i].GuestPhysicalAddress < _blocks[i - 1].EndAddress)
                throw new ArgumentException($"RAM blocks {_blocks[i - 1].Name} and {_blocks[i].Name} overlap");
        }
    }

    public IReadOnlyList<RamBlock> Blocks => _blocks;

    public ulong TotalBytes => (ulong)_blocks.Sum(b => (decimal)b.Size);

    public RamBlock? FindBlock(string name) => Array.Find(_blocks, b => b.Name == name);

    /// <summary>Finds the block holding all of [gpa, gpa + length). Ranges that cross blocks or leave RAM fail.</summary>
    public bool TryTranslate(ulong gpa, ulong length, out RamBlock block, out ulong offset)
    {
        foreach (var candidate in _blocks)
        {
            if (candidate.Contains(gpa, length))
            {
                block = candidate;
                offset = gpa - candidate.GuestPhysicalAddress;
                return true;
            }
        }
        block = null!;
        offset = 0;
        return false;
    }

    /// <summary>
    /// Splits [gpa, gpa + length) into the parts that lie in RAM blocks (block, offset, length); returns the bytes
    /// that lie outside RAM (in holes or past the end), which callers drop.
    /// </summary>
    public ulong ForEachRamRange(ulong gpa, ulong length, Action<RamBlock, ulong, ulong> action)
    {
        var end = gpa + length < gpa ? ulong.MaxValue : gpa + length;
        ulong inRam = 0;
        foreach (var block in _blocks)
        {
            var start = Math.Max(gpa, block.GuestPhysicalAddress);
            var stop = Math.Min(end, block.EndAddress);
            if (start < stop)
            {
                action(block, start - block.GuestPhysicalAddress, stop - start);
                inRam += stop - start;
            }
        }
        return (end - gpa) - inRam;
    }

    private (RamBlock Block, ulong Offset) Translate(ulong gpa, ulong length)
    {
        if (!TryTranslate(gpa, length, out var block, out var offset))
            throw new GuestMemoryException(gpa, length);
        block.EnsureResident(offset, length);
        return (block, offset);
    }

    /// <summary>Read-only view of guest RAM. Does not allocate host memory for holes beyond what reading does.</summary>
    public ReadOnlySpan<byte> GetReadSpan(ulong gpa, int length)
    {
        var (block, offset) = Translate(gpa, (ulong)length);
        return block.Mapping.GetSpan(offset, length);
    }

    /// <summary>Writable view of guest RAM; the pages are marked dirty in the VMM bitmap first.</summary>
    public Span<byte> GetWriteSpan(ulong gpa, int length)
    {
        var (block, offset) = Translate(gpa, (ulong)length);
        MarkDirty(block, offset, (ulong)length);
        return block.Mapping.GetSpan(offset, length);
    }

    public void Write(ulong gpa, ReadOnlySpan<byte> data) => data.CopyTo(GetWriteSpan(gpa, data.Length));

    public void Read(ulong gpa, Span<byte> destination) => GetReadSpan(gpa, destination.Length).CopyTo(destination);

    public T Read<T>(ulong gpa) where T : unmanaged
    {
        var (block, offset) = Translate(gpa, (ulong)sizeof(T));
        return Unsafe.ReadUnaligned<T>(block.Mapping.Pointer(offset, (ulong)sizeof(T)));
    }

    public void Write<T>(ulong gpa, T value) where T : unmanaged
    {
        var (block, offset) = Translate(gpa, (ulong)sizeof(T));
        MarkDirty(block, offset, (ulong)sizeof(T));
        Unsafe.WriteUnaligned(block.Mapping.Pointer(offset, (ulong)sizeof(T)), value);
    }

    /// <summary>Marks the pages the VMM writes in its own dirty set (KVM's log cannot see them).</summary>
    private static void MarkDirty(RamBlock block, ulong offset, ulong length)
    {
        var (first, count) = Page.Covering(offset, length);
        block.VmmDirty.AddRange(first, count);
    }

    public void Dispose()
    {
        foreach (var block in _blocks)
            block.Dispose();
    }
}

/// <summary>A guest-physical range that is not wholly inside one RAM block.</summary>
public sealed class GuestMemoryException : Exception
{
    public GuestMemoryException(ulong gpa, ulong length)
        : base($"guest-physical range [0x{gpa:X}, +0x{length:X}) is not inside one RAM block")
    {
        GuestPhysicalAddress = gpa;
        Length = length;
    }

    public GuestMemoryException() { }

    public GuestMemoryException(string message) : base(message) { }

    public GuestMemoryException(string message, Exception inner) : base(message, inner) { }

    public ulong GuestPhysicalAddress { get; }

    public ulong Length { get; }
}
