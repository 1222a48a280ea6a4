using System.Globalization;

namespace Ferry.Machine;

/// <summary>What a machine is made of. <see cref="Validate"/> checks it and names the bad value.</summary>
public sealed record MachineConfig
{
    public ulong MemoryBytes { get; init; } = 512 * GuestLayout.MiB;
    public int Cpus { get; init; } = 1;
    public string GuestImagePath { get; init; } = "";
    public string CommandLine { get; init; } = "";

    /// <summary>
    /// What guest RAM is made of (`--memory-backend`; `FERRY_MEMORY_BACKEND` sets the default, so a whole test
    /// suite can run on either). Memfd today; anonymous huge pages become the default once measured under KVM.
    /// </summary>
    public Ferry.Kvm.RamBackend MemoryBackend { get; init; } = DefaultMemoryBackend();

    /// <summary>Whether the machine has a virtio-balloon device (at the first virtio-mmio slot).</summary>
    public bool Balloon { get; init; } = true;

    /// <summary>Throws <see cref="ConfigException"/> naming the first bad value.</summary>
    public void Validate(ulong hostMemoryBytes)
    {
        if (MemoryBytes % GuestLayout.MemoryGranule != 0)
            throw new ConfigException($"memory {FormatSize(MemoryBytes)} is not a multiple of 2 MiB");
        if (MemoryBytes < GuestLayout.MinimumMemory)
            throw new ConfigException($"memory {FormatSize(MemoryBytes)} is below the minimum of 32 MiB");
        if (MemoryBytes > GuestLayout.MaximumMemory)
            throw new ConfigException($"memory {FormatSize(MemoryBytes)} is above Ferry's maximum of {FormatSize(GuestLayout.MaximumMemory)}");
        if (MemoryBytes > hostMemoryBytes)
            throw new ConfigException($"memory {FormatSize(MemoryBytes)} is more than this host can back ({FormatSize(hostMemoryBytes)} of RAM and swap)");
        if (Cpus < 1 || Cpus > GuestLayout.MaximumCpus)
            throw new ConfigException($"cpus {Cpus} is outside 1..{GuestLayout.MaximumCpus}");
    }

    /// <summary>Parses a memory backend name as `--memory-backend` takes it: memfd or anon. Throws naming the text.</summary>
    public static Ferry.Kvm.RamBackend ParseMemoryBackend(string text) => text.Trim().ToLowerInvariant() switch
    {
        "memfd" => Ferry.Kvm.RamBackend.Memfd,
        "anon" or "anonymous" => Ferry.Kvm.RamBackend.Anonymous,
        _ => throw new ConfigException($"memory backend '{text}' is not one of: memfd, anon"),
    };

    /// <summary>The backend when none is asked for: $FERRY_MEMORY_BACKEND, else memfd.</summary>
    public static Ferry.Kvm.RamBackend DefaultMemoryBackend()
    {
        var fromEnvironment = Environment.GetEnvironmentVariable("FERRY_MEMORY_BACKEND");
        return string.IsNullOrWhiteSpace(fromEnvironment) ? Ferry.Kvm.RamBackend.Memfd : ParseMemoryBackend(fromEnvironment);
    }

    /// <summary>
    /// Parses sizes as QEMU's -m and HMP balloon do: 512M, 1.5G, 8GiB, 2048K, 1T; a bare number is MiB (512 = 512M);
    /// a B suffix alone means bytes (33554432B). Throws ConfigException naming the text.
    /// </summary>
    public static ulong ParseSize(string text, string what)
    {
        var t = text.Trim();
        var unit = GuestLayout.MiB;
        var suffix = t.Length > 0 ? char.ToUpperInvariant(t[^1]) : ' ';
        if (suffix == 'B')
        {
            t = t[..^1];
            unit = 1;
            if (t.EndsWith('i'))
                t = t[..^1];
        }
        if (t.Length > 0)
        {
            var u = char.ToUpperInvariant(t[^1]) switch { 'K' => GuestLayout.KiB, 'M' => GuestLayout.MiB, 'G' => GuestLayout.GiB, 'T' => 1024 * GuestLayout.GiB, _ => 0UL };
            if (u != 0)
            {
                unit = u;
                t = t[..^1];
            }
        }
        if (!decimal.TryParse(t, NumberStyles.AllowDecimalPoint, CultureInfo.InvariantCulture, out var number) || number <= 0 || number > ulong.MaxValue / unit)
            throw new ConfigException($"{what} '{text}' is not a size (examples: 512M, 1.5G; a bare number is MiB)");
        var bytes = number * unit;
        if (bytes != decimal.Truncate(bytes))
            throw new ConfigException($"{what} '{text}' is not a whole number of bytes");
        return (ulong)bytes;
    }

    public static string FormatSize(ulong bytes) =>
        bytes % GuestLayout.GiB == 0 ? $"{bytes / GuestLayout.GiB} GiB"
        : bytes % GuestLayout.MiB == 0 ? $"{bytes / GuestLayout.MiB} MiB"
        : $"{bytes} bytes";

    /// <summary>RAM plus swap, from /proc/meminfo: the most guest memory this host can back.</summary>
    public static ulong HostMemoryBytes()
    {
        ulong total = 0;
        foreach (var line in File.ReadLines("/proc/meminfo"))
        {
            if (line.StartsWith("MemTotal:", StringComparison.Ordinal) || line.StartsWith("SwapTotal:", StringComparison.Ordinal))
            {
                var parts = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                total += ulong.Parse(parts[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        return total;
    }
}

/// <summary>A configuration value Ferry cannot use; the message names it.</summary>
public sealed class ConfigException : Exception
{
    public ConfigException() { }

    public ConfigException(string message) : base(message) { }

    public ConfigException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>Finds the guest image: $FERRY_GUEST, next to the program, or guest/build in a parent directory.</summary>
public static class GuestImageLocator
{
    public const string FileName = "ferry-guest.elf";

    public static string Locate()
    {
        var fromEnv = Environment.GetEnvironmentVariable("FERRY_GUEST");
        if (!string.IsNullOrEmpty(fromEnv))
            return fromEnv;
        var besideProgram = Path.Combine(AppContext.BaseDirectory, FileName);
        if (File.Exists(besideProgram))
            return besideProgram;
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "guest", "build", FileName);
            if (File.Exists(candidate))
                return candidate;
        }
        return Path.Combine("guest", "build", FileName);
    }
}
