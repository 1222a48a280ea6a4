using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Snapshot;

/// <summary>One block as <c>inspect</c> shows it. Present + ballooned + absent = pages.</summary>
public sealed record SnapshotBlockInfo(
    string Name, ulong Size, ulong Pages, ulong PresentPages, ulong BalloonedPages, ulong AbsentPages, ulong PagesOffset);

/// <summary>One state section as <c>inspect</c> shows it.</summary>
public sealed record SnapshotStateInfo(StateKind Kind, ushort Index, string Name, int Length, uint Crc);

/// <summary>How many checksums were verified and how many failed (a file that fails one is never opened, so 0).</summary>
public sealed record SnapshotChecksums(int Verified, int Failed, string Status);

/// <summary>A present page whose contents do not match its CRC32C.</summary>
public sealed record SnapshotBadPage(string Block, ulong Page, uint Stored, uint Computed);

/// <summary>
/// Every present page of a file checked against its CRC32C (<see cref="SnapshotFile.VerifyPages"/>): how many, how
/// many were bad, the first <see cref="MaxListed"/> bad ones by block and page, and how long it took.
/// </summary>
public sealed record SnapshotVerification(long PagesChecked, long BytesChecked, long BadPages, IReadOnlyList<SnapshotBadPage> FirstBadPages, double Milliseconds)
{
    public const int MaxListed = 100;

    public bool Passed => BadPages == 0;

    /// <summary>What <c>ferry snapshot inspect --verify --json</c> shows as "page-checks".</summary>
    public JsonObject ToJson()
    {
        var bad = new JsonArray();
        foreach (var page in FirstBadPages)
            bad.Add((JsonNode)new JsonObject { ["block"] = page.Block, ["page"] = page.Page, ["stored"] = page.Stored, ["computed"] = page.Computed });
        return new JsonObject
        {
            ["passed"] = Passed, ["pages-checked"] = PagesChecked, ["bytes-checked"] = BytesChecked, ["bad-pages"] = BadPages,
            ["first-bad-pages"] = bad, ["milliseconds"] = Math.Round(Milliseconds, 1),
        };
    }
}

/// <summary>
/// What a snapshot holds and costs: its blocks and page classes, the file's apparent size against the bytes it
/// really occupies (the page slots of absent pages are holes), the state sections, the checksum status and, when
/// asked for, every page checked (<see cref="Pages"/>). Plain records, so a CLI can print them or serialise them as JSON.
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
    SnapshotChecksums Checksums,
    SnapshotVerification? Pages = null)
{
    /// <summary>The exit status of <c>ferry snapshot inspect</c>: 1 when a page checked was bad, else 0.</summary>
    public int ExitCode => Pages is { Passed: false } ? 1 : 0;

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
        if (Pages is { } pages)
        {
            text.AppendLine(c, $"pages: {pages.PagesChecked} checked ({Size(pages.BytesChecked)} in {pages.Milliseconds:F0} ms), {pages.BadPages} bad{(pages.Passed ? "" : ": the file must not be restored")}");
            foreach (var bad in pages.FirstBadPages)
                text.AppendLine(c, $"  bad page: block '{bad.Block}' page {bad.Page} (stored 0x{bad.Stored:X8}, computed 0x{bad.Computed:X8})");
            if (pages.BadPages > pages.FirstBadPages.Count)
                text.AppendLine(c, $"  ... and {pages.BadPages - pages.FirstBadPages.Count} more");
        }
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
