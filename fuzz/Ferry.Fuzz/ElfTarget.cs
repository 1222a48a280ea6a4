using Ferry.Kvm;
using Ferry.Machine;

namespace Ferry.Fuzz;

/// <summary>
/// The guest image loader: <see cref="ElfImage.Parse"/> over arbitrary bytes, and, for an image it accepts whose
/// segments fit 16 MiB, <see cref="BootSetup.LoadImage"/> into synthetic RAM. Everything an accepted image says
/// (segments inside the file and the image area, entry inside an executable segment) is checked again here.
/// </summary>
public static class ElfTarget
{
    private const ulong RamBytes = 16 << 20;
    private static GuestMemory? s_memory;

    public static void Run(byte[] input)
    {
        ElfImage image;
        try
        {
            image = ElfImage.Parse(input, "fuzz.elf");
        }
        catch (InvalidGuestImageException)
        {
            return;
        }
        if (image.Segments.Count == 0)
            throw new FuzzOracleException("an image without loadable segments was accepted");
        foreach (var s in image.Segments)
        {
            if (s.FileSize > s.MemorySize || s.FileOffset > (ulong)input.Length || s.FileSize > (ulong)input.Length - s.FileOffset)
                throw new FuzzOracleException($"segment at 0x{s.PhysicalAddress:X} lies outside the file or its memory size");
            if (s.PhysicalAddress < GuestLayout.ImageAddress || s.PhysicalAddress + s.MemorySize > GuestLayout.LowRamLimit || s.PhysicalAddress + s.MemorySize < s.PhysicalAddress)
                throw new FuzzOracleException($"segment at 0x{s.PhysicalAddress:X} lies outside the image area");
        }
        if (!image.Segments.Any(s => s.Executable && image.Entry >= s.PhysicalAddress && image.Entry - s.PhysicalAddress < s.MemorySize))
            throw new FuzzOracleException($"entry 0x{image.Entry:X} is outside every executable segment");
        if (image.HighestAddress <= RamBytes && image.LowestAddress < image.HighestAddress)
        {
            s_memory ??= new GuestMemory([RamBlock.Create("ram-low", 0, RamBytes, 0)]);
            BootSetup.LoadImage(s_memory, image);
        }
    }
}
