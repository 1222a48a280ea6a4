using Ferry.Kvm;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Ram;

/// <summary>Counts of one send, by page class.</summary>
public sealed class RamSendCounters
{
    public ulong DataPages;
    public ulong ZeroPages;
    public ulong UntouchedPages;
    public ulong SkippedPages;
}

/// <summary>
/// Sends RAM blocks as stream records. The first pass walks only the memfd's data extents, so pages never touched
/// (or discarded) are neither read nor sent; later passes walk a dirty bitmap. Zero pages become zero runs; data
/// pages go out in batches of up to 256 contiguous pages straight from the guest mapping.
/// </summary>
public static class RamSender
{
    /// <summary>The first pass over a block: its data extents, minus pages in <paramref name="skip"/> (e.g. a trusted balloon bitmap).</summary>
    public static void SendFirstPass(RamBlock block, ushort index, RecordWriter writer, RamSendCounters counters, PageBitmap? skip = null)
    {
        ulong covered = 0;
        foreach (var (offset, length) in block.DataExtents())
        {
            SendRange(block, index, writer, counters, offset / ZeroPage.Size, length / ZeroPage.Size, skip, dirty: null);
            covered += length / ZeroPage.Size;
        }
        counters.UntouchedPages += block.PageCount - covered;
    }

    /// <summary>A later pass: the pages set in <paramref name="dirty"/>, minus those in <paramref name="skip"/>.</summary>
    public static void SendDirty(RamBlock block, ushort index, RecordWriter writer, RamSendCounters counters, PageBitmap dirty, PageBitmap? skip = null) =>
        SendRange(block, index, writer, counters, 0, block.PageCount, skip, dirty);

    private static void SendRange(RamBlock block, ushort index, RecordWriter writer, RamSendCounters counters, ulong firstPage, ulong pages, PageBitmap? skip, PageBitmap? dirty)
    {
        ulong runStart = 0, runLength = 0;   // pending data pages
        ulong zeroStart = 0, zeroLength = 0; // pending zero pages
        void FlushData()
        {
            if (runLength == 0)
                return;
            writer.WritePages(index, runStart * ZeroPage.Size, block.Mapping.GetSpan(runStart * ZeroPage.Size, (int)(runLength * ZeroPage.Size)));
            counters.DataPages += runLength;
            runLength = 0;
        }
        void FlushZero()
        {
            if (zeroLength == 0)
                return;
            writer.WriteZeroRun(index, zeroStart * ZeroPage.Size, (uint)zeroLength);
            counters.ZeroPages += zeroLength;
            zeroLength = 0;
        }
        for (var page = firstPage; page < firstPage + pages; page++)
        {
            if (dirty is not null && !dirty.Get(page))
            {
                FlushData();
                FlushZero();
                continue;
            }
            if (skip is not null && skip.Get(page))
            {
                FlushData();
                FlushZero();
                counters.SkippedPages++;
                continue;
            }
            if (ZeroPage.IsZero(block.Mapping.GetSpan(page * ZeroPage.Size, ZeroPage.Size)))
            {
                FlushData();
                if (zeroLength == 0)
                    zeroStart = page;
                zeroLength++;
                continue;
            }
            FlushZero();
            if (runLength == 0)
                runStart = page;
            runLength++;
            if (runLength == StreamLimits.MaxPagesPerRecord)
                FlushData();
        }
        FlushData();
        FlushZero();
    }
}

/// <summary>
/// Applies validated RAM records to the destination's blocks. Zero runs and ballooned pages become holes (discard),
/// not written zeros, so the destination allocates only what the guest really uses.
/// </summary>
public static class RamLoader
{
    /// <returns>True when the record was a RAM record and was applied.</returns>
    public static bool Apply(in Record record, GuestMemory memory) => Apply(record, memory.Blocks);

    /// <returns>True when the record was a RAM record and was applied.</returns>
    public static bool Apply(in Record record, IReadOnlyList<RamBlock> blocks)
    {
        switch (record.Type)
        {
            case RecordType.Pages:
            {
                var block = blocks[record.Block];
                record.Data.Span.CopyTo(block.Mapping.GetSpan(record.PageOffset, record.Data.Length));
                return true;
            }
            case RecordType.ZeroRun:
            {
                var block = blocks[record.Block];
                block.Discard(record.PageOffset, record.PageCount * ZeroPage.Size);
                return true;
            }
            case RecordType.BalloonBitmap:
            {
                var block = blocks[record.Block];
                // One hole punch per run of ballooned pages, not one per page.
                BitmapRuns.ForEach(record.Data.Span, record.PageOffset / ZeroPage.Size,
                    (page, count) => block.Discard(page * ZeroPage.Size, count * ZeroPage.Size));
                return true;
            }
            default:
                return false;
        }
    }
}
