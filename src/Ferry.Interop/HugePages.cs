using System.Globalization;

namespace Ferry.Interop;

/// <summary>
/// How much of a mapping the kernel maps with 2 MiB page-table entries, from /proc/self/smaps: AnonHugePages for
/// private anonymous memory, ShmemPmdMapped for a memfd. (The pagemap cannot say: it reports 4 KiB entries.) Reads a
/// text file of every mapping, so it is for tests, benchmarks and reports, not for hot paths.
/// </summary>
public static class HugePages
{
    /// <summary>Bytes mapped huge in the mapping (VMA) that contains <paramref name="address"/>; 0 when none contains it.</summary>
    public static long MappedBytes(nint address)
    {
        var inside = false;
        long bytes = 0;
        foreach (var line in File.ReadLines("/proc/self/smaps"))
        {
            var dash = line.IndexOf('-', StringComparison.Ordinal);
            var space = line.IndexOf(' ', StringComparison.Ordinal);
            if (dash > 0 && space > dash && IsHex(line.AsSpan(0, dash)))
            {
                if (inside)
                    return bytes;
                var start = ulong.Parse(line.AsSpan(0, dash), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                var end = ulong.Parse(line.AsSpan(dash + 1, space - dash - 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture);
                inside = (ulong)address >= start && (ulong)address < end;
                continue;
            }
            if (inside && (line.StartsWith("AnonHugePages:", StringComparison.Ordinal) || line.StartsWith("ShmemPmdMapped:", StringComparison.Ordinal)))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                bytes += long.Parse(fields[1], CultureInfo.InvariantCulture) * 1024;
            }
        }
        return bytes;
    }

    private static bool IsHex(ReadOnlySpan<char> text)
    {
        foreach (var c in text)
        {
            if (!char.IsAsciiHexDigit(c))
                return false;
        }
        return !text.IsEmpty;
    }
}
