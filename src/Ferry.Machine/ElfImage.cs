using System.Buffers.Binary;

namespace Ferry.Machine;

/// <summary>
/// A validated x86-64 ELF executable: its entry point and loadable segments. Every header field is checked
/// before use, so a damaged or hostile image is rejected with a reason instead of being half-loaded.
/// </summary>
public sealed class ElfImage
{
    private ElfImage(ulong entry, IReadOnlyList<Segment> segments, byte[] file)
    {
        Entry = entry;
        Segments = segments;
        File = file;
    }

    public sealed record Segment(ulong PhysicalAddress, ulong FileOffset, ulong FileSize, ulong MemorySize, bool Executable);

    public ulong Entry { get; }

    public IReadOnlyList<Segment> Segments { get; }

    public byte[] File { get; }

    public ulong LowestAddress => Segments.Min(s => s.PhysicalAddress);

    public ulong HighestAddress => Segments.Max(s => s.PhysicalAddress + s.MemorySize);

    public static ElfImage Load(string path)
    {
        byte[] bytes;
        try
        {
            bytes = System.IO.File.ReadAllBytes(path);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidGuestImageException(path, e is FileNotFoundException or DirectoryNotFoundException ? "no such file" : e.Message);
        }
        return Parse(bytes, path);
    }

    public static ElfImage Parse(byte[] file, string name)
    {
        var span = file.AsSpan();
        if (span.Length < 64 || span[0] != 0x7F || span[1] != (byte)'E' || span[2] != (byte)'L' || span[3] != (byte)'F')
            throw new InvalidGuestImageException(name, "not an ELF file (bad magic)");
        if (span[4] != 2 || span[5] != 1)
            throw new InvalidGuestImageException(name, "not a 64-bit little-endian ELF");
        var type = BinaryPrimitives.ReadUInt16LittleEndian(span[16..]);
        var machine = BinaryPrimitives.ReadUInt16LittleEndian(span[18..]);
        if (type != 2)
            throw new InvalidGuestImageException(name, $"ELF type {type} is not an executable (ET_EXEC)");
        if (machine != 62)
            throw new InvalidGuestImageException(name, $"ELF machine {machine} is not x86-64");
        var entry = BinaryPrimitives.ReadUInt64LittleEndian(span[24..]);
        var phoff = BinaryPrimitives.ReadUInt64LittleEndian(span[32..]);
        var phentsize = BinaryPrimitives.ReadUInt16LittleEndian(span[54..]);
        var phnum = BinaryPrimitives.ReadUInt16LittleEndian(span[56..]);
        if (phentsize != 56 || phnum == 0 || phnum > 64 || phoff > (ulong)span.Length || (ulong)phnum * 56 > (ulong)span.Length - phoff)
            throw new InvalidGuestImageException(name, "program header table is missing or outside the file");

        var segments = new List<Segment>();
        for (var i = 0; i < phnum; i++)
        {
            var ph = span.Slice((int)phoff + i * 56, 56);
            if (BinaryPrimitives.ReadUInt32LittleEndian(ph) != 1) // PT_LOAD
                continue;
            var flags = BinaryPrimitives.ReadUInt32LittleEndian(ph[4..]);
            var offset = BinaryPrimitives.ReadUInt64LittleEndian(ph[8..]);
            var paddr = BinaryPrimitives.ReadUInt64LittleEndian(ph[24..]);
            var filesz = BinaryPrimitives.ReadUInt64LittleEndian(ph[32..]);
            var memsz = BinaryPrimitives.ReadUInt64LittleEndian(ph[40..]);
            if (filesz > memsz)
                throw new InvalidGuestImageException(name, $"segment {i}: file size {filesz} exceeds memory size {memsz}");
            if (offset > (ulong)span.Length || filesz > (ulong)span.Length - offset)
                throw new InvalidGuestImageException(name, $"segment {i}: data lies outside the file");
            if (paddr < GuestLayout.ImageAddress || memsz > GuestLayout.LowRamLimit || paddr > GuestLayout.LowRamLimit - memsz)
                throw new InvalidGuestImageException(name, $"segment {i}: [0x{paddr:X}, +0x{memsz:X}) is outside the image area [0x{GuestLayout.ImageAddress:X}, 0x{GuestLayout.LowRamLimit:X})");
            segments.Add(new Segment(paddr, offset, filesz, memsz, (flags & 1) != 0));
        }
        if (segments.Count == 0)
            throw new InvalidGuestImageException(name, "no loadable segments");
        if (!segments.Any(s => s.Executable && entry >= s.PhysicalAddress && entry < s.PhysicalAddress + s.MemorySize))
            throw new InvalidGuestImageException(name, $"entry point 0x{entry:X} is not inside an executable segment");
        return new ElfImage(entry, segments, file);
    }
}

/// <summary>The guest image is missing or is not an image Ferry can boot.</summary>
public sealed class InvalidGuestImageException : Exception
{
    public InvalidGuestImageException(string path, string reason) : base($"guest image {path}: {reason}") { }

    public InvalidGuestImageException() { }

    public InvalidGuestImageException(string message) : base(message) { }

    public InvalidGuestImageException(string message, Exception inner) : base(message, inner) { }
}
