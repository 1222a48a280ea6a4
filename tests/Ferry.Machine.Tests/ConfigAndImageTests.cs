using System.Buffers.Binary;
using Xunit;

namespace Ferry.Machine.Tests;

/// <summary>Configuration parsing and validation, the layout, and hostile guest images. No KVM needed.</summary>
public sealed class ConfigAndImageTests
{
    [Theory]
    [InlineData("512M", 512UL << 20)]
    [InlineData("8G", 8UL << 30)]
    [InlineData("8GiB", 8UL << 30)]
    [InlineData("2048K", 2UL << 20)]
    [InlineData("33554432B", 32UL << 20)]
    [InlineData("32", 32UL << 20)]
    [InlineData("1.5G", 1536UL << 20)]
    [InlineData("0.5M", 512UL << 10)]
    public void Sizes_parse(string text, ulong bytes) => Assert.Equal(bytes, MachineConfig.ParseSize(text, "--memory"));

    [Theory]
    [InlineData("")]
    [InlineData("lots")]
    [InlineData("-5M")]
    [InlineData("0")]
    [InlineData("0.1K")]
    [InlineData("1e3M")]
    [InlineData("99999999999999999999G")]
    public void Bad_sizes_are_rejected_naming_the_text(string text)
    {
        var e = Assert.Throws<ConfigException>(() => MachineConfig.ParseSize(text, "--memory"));
        Assert.Contains($"'{text}'", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Validation_names_the_bad_value()
    {
        const ulong host = 16UL << 30;
        Assert.Contains("not a multiple of 2 MiB", Assert.Throws<ConfigException>(() => new MachineConfig { MemoryBytes = 513UL << 20 }.Validate(host)).Message, StringComparison.Ordinal);
        Assert.Contains("more than this host can back", Assert.Throws<ConfigException>(() => new MachineConfig { MemoryBytes = 32UL << 30 }.Validate(host)).Message, StringComparison.Ordinal);
        Assert.Contains("below the minimum", Assert.Throws<ConfigException>(() => new MachineConfig { MemoryBytes = 16UL << 20 }.Validate(host)).Message, StringComparison.Ordinal);
        Assert.Contains("cpus 0", Assert.Throws<ConfigException>(() => new MachineConfig { Cpus = 0 }.Validate(host)).Message, StringComparison.Ordinal);
        new MachineConfig { MemoryBytes = 8UL << 30, Cpus = 2 }.Validate(host);
    }

    [Fact]
    public void RAM_is_split_around_the_MMIO_window()
    {
        Assert.Equal([("ram-low", 0UL, 512UL << 20)], GuestLayout.RamBlocks(512UL << 20));
        var blocks = GuestLayout.RamBlocks(8UL << 30);
        Assert.Equal(("ram-low", 0UL, 3UL << 30), blocks[0]);
        Assert.Equal(("ram-high", 4UL << 30, 5UL << 30), blocks[1]);
        Assert.Equal(9UL << 30, GuestLayout.IdentityMapEnd(8UL << 30));
        Assert.Equal(4UL << 30, GuestLayout.IdentityMapEnd(512UL << 20));
    }

    private static byte[] MinimalElf(Action<byte[]>? damage = null)
    {
        var file = new byte[4096];
        "\x7fELF"u8.ToArray().Select(c => c).ToArray().CopyTo(file, 0);
        file[0] = 0x7F; file[1] = (byte)'E'; file[2] = (byte)'L'; file[3] = (byte)'F';
        file[4] = 2; file[5] = 1; file[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(16), 2);       // ET_EXEC
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(18), 62);      // x86-64
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(24), 0x100010); // entry
        BinaryPrimitives.WriteUInt64LittleEndian(file.AsSpan(32), 64);      // phoff
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(54), 56);
        BinaryPrimitives.WriteUInt16LittleEndian(file.AsSpan(56), 1);
        var ph = file.AsSpan(64);
        BinaryPrimitives.WriteUInt32LittleEndian(ph, 1);                    // PT_LOAD
        BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], 5);               // R+X
        BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], 0);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], 0x100000);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], 4096);
        BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], 8192);
        damage?.Invoke(file);
        return file;
    }

    [Fact]
    public void A_well_formed_image_parses()
    {
        var image = ElfImage.Parse(MinimalElf(), "test");
        Assert.Equal(0x100010UL, image.Entry);
        Assert.Equal(0x102000UL, image.HighestAddress);
    }

    [Theory]
    [InlineData("magic", "bad magic")]
    [InlineData("class", "64-bit")]
    [InlineData("type", "not an executable")]
    [InlineData("machine", "not x86-64")]
    [InlineData("phoff", "program header table")]
    [InlineData("filesz", "outside the file")]
    [InlineData("memsz", "exceeds memory size")]
    [InlineData("paddr", "outside the image area")]
    [InlineData("entry", "entry point")]
    [InlineData("noload", "no loadable segments")]
    public void Hostile_images_are_rejected_with_a_reason(string damage, string reason)
    {
        var file = MinimalElf(f =>
        {
            var ph = f.AsSpan(64);
            switch (damage)
            {
                case "magic": f[1] = (byte)'X'; break;
                case "class": f[4] = 1; break;
                case "type": BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(16), 3); break;
                case "machine": BinaryPrimitives.WriteUInt16LittleEndian(f.AsSpan(18), 3); break;
                case "phoff": BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(32), ulong.MaxValue - 8); break;
                case "filesz": BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], 1UL << 40); BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], 1UL << 41); break;
                case "memsz": BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], 16); break;
                case "paddr": BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], 0x1000); break;
                case "entry": BinaryPrimitives.WriteUInt64LittleEndian(f.AsSpan(24), 0x900000); break;
                case "noload": BinaryPrimitives.WriteUInt32LittleEndian(ph, 4); break;
            }
        });
        var e = Assert.Throws<InvalidGuestImageException>(() => ElfImage.Parse(file, "hostile.elf"));
        Assert.Contains(reason, e.Message, StringComparison.Ordinal);
        Assert.Contains("hostile.elf", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Truncated_and_missing_images_are_rejected()
    {
        Assert.Throws<InvalidGuestImageException>(() => ElfImage.Parse(new byte[10], "short"));
        var e = Assert.Throws<InvalidGuestImageException>(() => ElfImage.Load("/nonexistent/guest.elf"));
        Assert.Contains("no such file", e.Message, StringComparison.Ordinal);
    }
}
