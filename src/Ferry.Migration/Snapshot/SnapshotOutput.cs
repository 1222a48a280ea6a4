using Ferry.Kvm;
using Ferry.Migration.Engine;

namespace Ferry.Migration.Snapshot;

/// <summary>
/// The precopy engine's output as a snapshot file: <see cref="PrecopyMigration.Run(IMigrationOutput)"/> sends its
/// passes into the file instead of channels. Each sending thread gets a sink over the one shared
/// <see cref="SnapshotWriter"/>: PAGES become slot writes, ZERO_RUN marks the pages absent (punching a slot
/// written in an earlier pass), BALLOON_BITMAP records the balloon and punches the ballooned slots. The engine's
/// chunk-to-thread pinning orders all writes of a page, as the writer requires. <see cref="Complete"/> writes the
/// state and metadata while the guest is paused; <see cref="Finish"/> syncs and marks the file complete after the
/// guest resumed (so the disk's final sync is not downtime), and the save only completes after it.
///
/// The last sink to end a pass syncs the file. Without that, a pass would "finish" at page-cache speed, the
/// engine would expect a short downtime from that bandwidth, and the paused guest would then wait for the whole
/// save's writeback in the final sync.
/// </summary>
/// <param name="sourceRunsOn">See <see cref="SourceRunsOn"/>: true for a snapshot, false for a migration into the file.</param>
public sealed class SnapshotOutput(string path, int threads, bool sourceRunsOn = true) : IMigrationOutput
{
    private SnapshotWriter? _writer;
    private long _passEnds;

    public string Description => $"file:{path}";

    /// <summary>The writer, once opened (for its counters).</summary>
    public SnapshotWriter? Writer => _writer;

    public IReadOnlyList<IPageSink> Open(IReadOnlyList<RamBlock> blocks, CancellationToken cancel)
    {
        if (threads is < 1 or > 64)
            throw new MigrationException(MigrationErrorKind.OutputFailed, $"{threads} snapshot threads (1..64)");
        try
        {
            _writer = SnapshotWriter.Create(path, blocks);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new MigrationException(MigrationErrorKind.OutputFailed, $"cannot create snapshot {path}: {e.Message}", e);
        }
        return [.. Enumerable.Range(0, threads).Select(_ => new Sink(this, _writer))];
    }

    public bool SourceRunsOn => sourceRunsOn;

    /// <summary>
    /// The state and the metadata go into the file (page cache): the paused guest needs nothing more, so it can
    /// run on while <see cref="Finish"/> waits for the disk.
    /// </summary>
    public void Complete(IReadOnlyList<StateSection> state, TimeSpan timeout) =>
        (_writer ?? throw new InvalidOperationException("the snapshot output was never opened")).WriteFinalMetadata(state);

    /// <summary>Sync, completion mark, sync: only now is the file a snapshot.</summary>
    public void Finish() =>
        (_writer ?? throw new InvalidOperationException("the snapshot output was never opened")).Seal();

    /// <summary>Closes the file unfinished: sending threads still writing get an error and stop; the reader refuses the file.</summary>
    public void Abort(bool keepControl) => _writer?.Dispose();

    public string? RemoteFailure() => null;

    public void Dispose() => _writer?.Dispose();

    /// <summary>Called by each sink at the end of its pass; the last of a pass syncs what the pass wrote.</summary>
    private void PassEnded(SnapshotWriter writer)
    {
        if (Interlocked.Increment(ref _passEnds) % threads == 0)
            writer.Flush();
    }

    /// <summary>One sending thread's view: the shared writer plus its own byte count.</summary>
    private sealed class Sink(SnapshotOutput output, SnapshotWriter writer) : IPageSink
    {
        public long BytesWritten { get; private set; }

        public void WritePages(ushort block, ulong pageOffset, ReadOnlySpan<byte> pages)
        {
            writer.WritePages(block, pageOffset / Page.Size, pages);
            BytesWritten += pages.Length;
        }

        public void WriteZeroRun(ushort block, ulong pageOffset, uint count) =>
            writer.MarkAbsent(block, pageOffset / Page.Size, count);

        public void WriteBalloonBitmap(ushort block, ulong firstPage, ReadOnlySpan<byte> bitmap) =>
            writer.SetBallooned(block, firstPage, bitmap);

        // Nothing is buffered: every write is already in the file.
        public void EndPass(uint pass) => output.PassEnded(writer);
    }
}
