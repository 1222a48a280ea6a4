using Ferry.Kvm;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>
/// Free page hinting (VIRTIO_BALLOON_F_FREE_PAGE_HINT), with QEMU's cmd_id values. A run: the host writes a new
/// cmd_id; the driver echoes it, then hands over free blocks; the host stops the run with STOP and lets the
/// guest reuse the blocks with DONE. Hints are accepted only while the driver's announced id is the current one.
/// </summary>
public sealed partial class BalloonDevice
{
    // QEMU increments before use, so its first run is 0x80000001; after 0xFFFFFFFF it wraps to 0x80000000.
    private uint _lastCmdId = CmdIdMin;
    private uint _driverCmdId;
    private FreePageHintState _hintState = FreePageHintState.Idle;
    private ulong _hintedPages, _staleHints, _hintBytesOutsideRam;
    private PageSet[]? _hintBitmaps;

    /// <summary>Raised (on the vCPU thread, under the device lock: keep it quick) for every validated hint.</summary>
    public event Action<FreePageHint>? FreePageHinted;

    public FreePageHintStatus HintStatus
    {
        get
        {
            lock (_transport.SyncRoot)
                return new FreePageHintStatus(_hintState, _configCmdId, _hintedPages, _staleHints, _hintBytesOutsideRam);
        }
    }

    /// <summary>Pages hinted in the current (or last) run, per block; null before the first run.</summary>
    public PageSet? HintedPages(RamBlock block)
    {
        lock (_transport.SyncRoot)
            return _hintBitmaps?[IndexOf(block)];
    }

    /// <summary>Starts a hint run with a fresh cmd_id, as QEMU numbers them (0x80000001 first, wrapping to 0x80000000).</summary>
    public uint StartFreePageHinting()
    {
        lock (_transport.SyncRoot)
        {
            if (!_transport.DriverOk || !Has(FREE_PAGE_HINT))
                throw new InvalidOperationException("the guest's balloon driver has not negotiated free page hinting");
            var id = _lastCmdId == uint.MaxValue ? CmdIdMin : _lastCmdId + 1;
            _lastCmdId = id;
            _configCmdId = id;
            _hintState = FreePageHintState.Requested;
            _hintedPages = 0;
            _hintBitmaps = [.. _memory.Blocks.Select(b => new PageSet(b.PageCount))];
            _transport.SignalConfigChange();
            return id;
        }
    }

    /// <summary>Stops the run: the driver stops hinting (it keeps the blocks until <see cref="FinishFreePageHinting"/>).</summary>
    public void StopFreePageHinting()
    {
        lock (_transport.SyncRoot)
        {
            if (_hintState is FreePageHintState.Idle or FreePageHintState.Done)
                return;
            _configCmdId = CmdIdStop;
            _hintState = FreePageHintState.Stopped;
            _transport.SignalConfigChange();
        }
    }

    /// <summary>Ends the run: the driver may free and reuse the hinted blocks.</summary>
    public void FinishFreePageHinting()
    {
        lock (_transport.SyncRoot)
        {
            if (_hintState == FreePageHintState.Idle)
                return;
            _configCmdId = CmdIdDone;
            _hintState = FreePageHintState.Done;
            _transport.SignalConfigChange();
        }
    }

    private bool HandleFreePage(SplitQueue queue, DescriptorChain chain)
    {
        foreach (var segment in chain.Segments)
        {
            _notifyRuns++;
            if (!segment.Writable)
            {
                // The driver's cmd_id message: 4 bytes, device-readable.
                if (segment.Length != 4)
                {
                    _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"free page cmd_id buffer of {segment.Length} bytes");
                    continue;
                }
                var id = _memory.Read<uint>(segment.Address);
                if (id == CmdIdStop)
                {
                    if (_hintState == FreePageHintState.Active)
                        _hintState = FreePageHintState.Stopped;
                    _driverCmdId = CmdIdStop;
                }
                else if (id == _configCmdId && _hintState == FreePageHintState.Requested)
                {
                    _driverCmdId = id;
                    _hintState = FreePageHintState.Active;
                }
                else
                {
                    _driverCmdId = id; // a stale id: its hints will be dropped
                }
                continue;
            }
            if (_hintState != FreePageHintState.Active || _driverCmdId != _configCmdId)
            {
                _staleHints++;
                continue;
            }
            if (!Page.IsAligned(segment.Address) || !Page.IsAligned(segment.Length))
            {
                _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"hint 0x{segment.Address:X}+0x{segment.Length:X} is not page-aligned");
                continue;
            }
            // Descriptors were checked to lie in one RAM block already; the split keeps this right if that rule changes.
            _hintBytesOutsideRam += _memory.ForEachRamRange(segment.Address, segment.Length, (block, offset, length) =>
            {
                _hintBitmaps![IndexOf(block)].AddRange(offset >> Page.Shift, length >> Page.Shift);
                _hintedPages += length >> Page.Shift;
                FreePageHinted?.Invoke(new FreePageHint(_driverCmdId, block, offset, length));
            });
        }
        queue.PushUsed(chain.Head, 0);
        return true;
    }

    private void ResetHinting()
    {
        _hintState = FreePageHintState.Idle;
        _driverCmdId = 0;
    }
}
