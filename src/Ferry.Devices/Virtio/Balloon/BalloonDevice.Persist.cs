using Ferry.Kvm;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>
/// The balloon's device state for migration and snapshots: config, hint run, queue numbering and the buffers the
/// device holds (stats, free-bitmap request). The balloon bitmap itself travels as BALLOON_BITMAP records
/// (<see cref="ApplyBalloonBitmap"/>). Restored after the transport's state.
/// </summary>
public sealed partial class BalloonDevice
{
    private const uint StateVersion = 1;

    public byte[] SaveState()
    {
        lock (_transport.SyncRoot)
        {
            var w = new StateWriter().U32(StateVersion)
                .U32(_numPages).U32(_actual).U32(_configCmdId).U32(_poisonValue)
                .U32(_lastCmdId).U32(_driverCmdId).U32((uint)_hintState).U8(UsesFixedQueueNumbers ? (byte)1 : (byte)0)
                .U64(_inflated).U64(_deflated).U64(_reported).U64(_discardedReported).U64(_droppedPfns).U64(_bitmapMessages);
            WriteChain(w, _heldStats);
            WriteChain(w, _heldRequest);
            return w.ToArray();
        }
    }

    public void RestoreState(ReadOnlySpan<byte> blob)
    {
        var r = new StateReader(blob, "virtio-balloon state");
        var version = r.U32();
        if (version != StateVersion)
            throw new InvalidDataException($"virtio-balloon state version {version} is not {StateVersion}");
        lock (_transport.SyncRoot)
        {
            _numPages = r.U32();
            _actual = r.U32();
            _configCmdId = r.U32();
            _poisonValue = r.U32();
            _lastCmdId = r.U32();
            _driverCmdId = r.U32();
            var hintState = r.U32();
            if (hintState > (uint)FreePageHintState.Done)
                throw new InvalidDataException($"virtio-balloon state: hint state {hintState} is unknown");
            _hintState = (FreePageHintState)hintState;
            UsesFixedQueueNumbers = r.U8() != 0;
            _inflated = r.U64();
            _deflated = r.U64();
            _reported = r.U64();
            _discardedReported = r.U64();
            _droppedPfns = r.U64();
            _bitmapMessages = r.U64();
            var (fixedNumbering, compacted) = RoleMappings();
            // The roles were set when the driver set DRIVER_OK and stay while the device needs a reset (it may hold buffers then).
            _roleByQueue = (_transport.Status & VirtioBits.StatusDriverOk) != 0 ? (UsesFixedQueueNumbers ? fixedNumbering : compacted) : [];
            _statsQueue = QueueOf(Role.Stats);
            _freeBitmapQueue = QueueOf(Role.FreeBitmap);
            _heldStats = ReadChain(ref r, _statsQueue);
            _heldRequest = ReadChain(ref r, _freeBitmapQueue);
            r.End();
            _hintBitmaps = [.. _memory.Blocks.Select(b => new PageSet(b.PageCount))];
        }
    }

    /// <summary>Sets pages of a block's balloon bitmap from a BALLOON_BITMAP record (bit i = page first + i).</summary>
    public void ApplyBalloonBitmap(RamBlock block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        // The record is the truth for every page it covers: pages deflated since an earlier record leave the balloon.
        var target = BalloonBitmap(block);
        if (firstPage < block.PageCount)
        {
            var covered = Math.Min((ulong)bitmap.Length * 8, block.PageCount - firstPage);
            target.RemoveRange(firstPage, covered);
        }
        foreach (var run in PageSet.RunsIn(bitmap, firstPage))
            target.AddRange(run.Start, run.Length);
    }

    private static void WriteChain(StateWriter w, DescriptorChain? chain)
    {
        if (chain is null)
        {
            w.U8(0);
            return;
        }
        w.U8(1).U16(chain.Head).U16((ushort)chain.Segments.Count);
        foreach (var s in chain.Segments)
            w.U64(s.Address).U32(s.Length).U8(s.Writable ? (byte)1 : (byte)0);
    }

    private DescriptorChain? ReadChain(ref StateReader r, int queueIndex)
    {
        if (r.U8() == 0)
            return null;
        var head = r.U16();
        var count = r.U16();
        if (queueIndex < 0 || head >= _transport.Queue(queueIndex).Size || count == 0 || count > _transport.Queue(queueIndex).Size)
            throw new InvalidDataException($"virtio-balloon state: a held buffer (head {head}, {count} segments) does not fit its queue");
        var segments = new BufferSegment[count];
        for (var i = 0; i < count; i++)
        {
            var address = r.U64();
            var length = r.U32();
            var writable = r.U8() != 0;
            if (!_memory.TryTranslate(address, length, out _, out _))
                throw new InvalidDataException($"virtio-balloon state: held buffer 0x{address:X}+{length} is outside guest RAM");
            segments[i] = new BufferSegment(address, length, writable);
        }
        return new DescriptorChain(head, segments);
    }
}
