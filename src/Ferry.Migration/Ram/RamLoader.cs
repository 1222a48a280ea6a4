using Ferry.Kvm;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Ram;

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
                if (!record.Landed) // else the reader received it straight into the block
                    blocks[record.Block].WriteAt(record.PageOffset, record.Data.Span);
                return true;
            }
            case RecordType.ZeroRun:
            {
                var block = blocks[record.Block];
                block.Discard(record.PageOffset, record.PageCount * Page.Size);
                return true;
            }
            case RecordType.BalloonBitmap:
            {
                var block = blocks[record.Block];
                // One hole punch per run of ballooned pages, not one per page.
                foreach (var run in PageSet.RunsIn(record.Data.Span, record.PageOffset >> Page.Shift))
                    block.Discard(run.Start << Page.Shift, run.Length << Page.Shift);
                return true;
            }
            default:
                return false;
        }
    }
}
