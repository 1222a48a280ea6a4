using System.Globalization;
using System.Text;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Snapshot;

/// <summary>One block as <c>inspect</c> shows it. Present + ballooned + absent = pages.</summary>
public sealed record SnapshotBlockInfo(
    string Name, ulong Size, ulong Pages, ulong PresentPages, ulong BalloonedPages, ulong AbsentPages, ulong PagesOffset);

/// <summary>One state section as <c>inspect</c> shows it.</summary>
public sealed record SnapshotStateInfo(StateKind Kind, ushort Index, string Name, int Length, uint Crc);

/// <summary>How many checksums were verified and how many failed (a file that fails one is never opened, so 0).</summary>
public sealed record SnapshotChecksums(int Verified, int Failed, string Status);

/// <summary>
/// What a snapshot holds and costs: its blocks and page classes, the file's apparent size against the bytes it
/// really occupies (the page slots of absent pages are holes), the state sections, and the checksum status.
/// Plain records, so a CLI can print them or serialise them as JSON.
/// </summary>
public sealed record SnapshotInspection(
    string Path,
    uint Version,
    int PageSize,
    long FileBytes,
    long AllocatedBytes,
    long PresentBytes,
    IReadOnlyList<SnapshotBlockInfo> Blocks,
    IReadOnlyList<SnapshotStateInfo> State,
    SnapshotChecksums Checksums)
{
    /// <summary>A human-readable table (what <c>ferry snapshot inspect</c> prints without --json).</summary>
    public string Format()
    {
        var text = new StringBuilder();
        var c = CultureInfo.InvariantCulture;
        text.AppendLine(c, $"snapshot {Path} (format version {Version}, page size {PageSize})");
        text.AppendLine(c, $"file size {Size(FileBytes)}, allocated {(AllocatedBytes < 0 ? "unknown" : Size(AllocatedBytes))}, pages present {Size(PresentBytes)}");
        text.AppendLine(c, $"{"block",-16} {"size",10} {"present",12} {"ballooned",12} {"absent",12}");
        foreach (var block in Blocks)
            text.AppendLine(c, $"{block.Name,-16} {Size((long)block.Size),10} {block.PresentPages,12} {block.BalloonedPages,12} {block.AbsentPages,12}");
        text.AppendLine(c, $"state: {State.Count} sections, {State.Sum(s => (long)s.Length)} bytes");
        foreach (var section in State)
            text.AppendLine(c, $"  {section.Kind.ToString().ToLowerInvariant(),-8} {section.Index,4} {section.Name,-20} {section.Length,10} bytes  crc 0x{section.Crc:X8}");
        text.AppendLine(c, $"checksums: {Checksums.Verified} verified, {Checksums.Failed} failed ({Checksums.Status})");
        return text.ToString();
    }

    private static string Size(long bytes) => bytes switch
    {
        >= 1L << 30 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):F2} GiB"),
        >= 1L << 20 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 20):F2} MiB"),
        >= 1L << 10 => string.Create(CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 10):F2} KiB"),
        _ => string.Create(CultureInfo.InvariantCulture, $"{bytes} B"),
    };
}
