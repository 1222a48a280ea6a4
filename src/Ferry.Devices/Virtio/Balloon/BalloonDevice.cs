using System.Buffers.Binary;
using Ferry.Kvm;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>A free-page hint delivered to subscribers (migration): a range inside one RAM block.</summary>
public readonly record struct FreePageHint(uint CommandId, RamBlock Block, ulong Offset, ulong Length);

public enum FreePageHintState { Idle, Requested, Active, Stopped, Done }

public sealed record FreePageHintStatus(FreePageHintState State, uint CommandId, ulong HintedPages, ulong DroppedStaleHints, ulong DroppedOutsideRamBytes);

/// <summary>
/// What the device did for its driver. <paramref name="DeferredNotifies"/>: notifies that reached the work budget with
/// buffers left for the next one; <paramref name="LargestNotifyBytes"/> and <paramref name="LargestNotifyRuns"/>: the
/// most work one notify did (driver buffer bytes read, page runs applied); docs/virtio-balloon.md, Work per notify.
/// </summary>
public sealed record BalloonCounters(
    ulong InflatedPages, ulong DeflatedPages, ulong ReportedPages, ulong DiscardedReportedPages, ulong DroppedPfns, ulong BitmapMessages,
    ulong DeferredNotifies = 0, ulong LargestNotifyBytes = 0, ulong LargestNotifyRuns = 0);

/// <summary>
/// The virtio-balloon device (docs/virtio-balloon.md). Inflated pages are discarded (memfd hole) and recorded in a
/// per-RAM-block balloon bitmap; deflated pages are cleared from it. Free page hints are validated, split by RAM
/// block and delivered to subscribers; they never discard memory. Reported pages are discarded only when that is
/// safe for page poisoning. Every request from the driver is hostile input.
/// </summary>
public sealed partial class BalloonDevice : IVirtioDevice
{
    public const int MUST_TELL_HOST = 0;
    public const int STATS_VQ = 1;
    public const int DEFLATE_ON_OOM = 2;
    public const int FREE_PAGE_HINT = 3;
    public const int PAGE_POISON = 4;
    public const int REPORTING = 5;
    public const int FERRY_F_PAGE_BITMAP = 62;
    public const int FERRY_F_FREE_PAGE_BITMAP = 63;

    public const uint CmdIdStop = 0;
    public const uint CmdIdDone = 1;
    public const uint CmdIdMin = 0x8000_0000;

    private const int MaxPfnBufferBytes = 1 << 16;
    private const int MaxStatsBytes = 4096;

    /// <summary>
    /// The work one queue notify may do (docs/virtio-balloon.md, Work per notify): buffers are taken from the ring only
    /// while less than this many driver bytes were read and less than <see cref="NotifyRunBudget"/> page runs applied;
    /// the first buffer always is. What is left stays available until the driver's next notify.
    /// </summary>
    public const int NotifyByteBudget = 2 << 20;

    /// <summary>Page runs (a bitmap update, a discard, a hint delivered) one notify may apply before it stops taking buffers.</summary>
    public const int NotifyRunBudget = 16_384;

    /// <summary>
    /// The most page runs one inflate or deflate bitmap message may name: a larger one is refused as a driver error
    /// (each run may cost a hole punch). It is what a 32,768-page message (the most Ferry's guest sends) can hold,
    /// and what a full 64 KiB PFN buffer names.
    /// </summary>
    public const int MaxRunsPerMessage = 16_384;

    private enum Role { Inflate, Deflate, Stats, FreePage, Reporting, FreeBitmap }

    private readonly GuestMemory _memory;
    private readonly PageSet[] _balloonBitmaps;
    private Role?[] _roleByQueue = [];
    private IVirtioTransport _transport = null!;

    private uint _numPages;
    private uint _actual;
    private uint _configCmdId;
    private uint _poisonValue;

    private ulong _inflated, _deflated, _reported, _discardedReported, _droppedPfns, _bitmapMessages;
    private ulong _notifyBytes, _notifyRuns;  // the current notify's work
    private ulong _deferredNotifies, _largestNotifyBytes, _largestNotifyRuns;

    public BalloonDevice(GuestMemory memory)
    {
        _memory = memory;
        _balloonBitmaps = [.. memory.Blocks.Select(b => new PageSet(b.PageCount))];
    }

    public string Name => "virtio-balloon";

    public uint DeviceId => 5;

    public ulong DeviceFeatures =>
        (1UL << VirtioBits.VERSION_1) | (1UL << MUST_TELL_HOST) | (1UL << STATS_VQ) | (1UL << DEFLATE_ON_OOM) |
        (1UL << FREE_PAGE_HINT) | (1UL << PAGE_POISON) | (1UL << REPORTING) |
        (1UL << FERRY_F_PAGE_BITMAP) | (1UL << FERRY_F_FREE_PAGE_BITMAP);

    public int QueueCount => 6;

    public ushort QueueMaxSize => 256;

    public int ConfigSize => 16;

    public void Attach(IVirtioTransport transport) => _transport = transport;

    /// <summary>Raised (on a vCPU thread, under the device lock) when the driver reports a new `actual`.</summary>
    public event Action<uint>? ActualChanged;

    /// <summary>
    /// Raised (on a vCPU thread, under the device lock) for every range the device discarded on the guest's word
    /// (block, offset, length): inflated pages and reported free pages, which read as zero now. A verified migration
    /// leaves them out of its comparison until the guest writes them again.
    /// </summary>
    public event Action<RamBlock, ulong, ulong>? PagesDiscarded;

    /// <summary>The per-block balloon bitmap (device state): pages the guest gave to the host.</summary>
    public PageSet BalloonBitmap(RamBlock block) => _balloonBitmaps[IndexOf(block)];

    /// <summary>Whether the balloon bitmap can be trusted: only when the guest promised to tell before reuse.</summary>
    public bool MustTellHost => Has(MUST_TELL_HOST);

    public bool Has(int feature) => VirtioBits.Has(_transport.NegotiatedFeatures, feature);

    /// <summary>Whether the driver numbered its queues as the spec fixes them (true) or compacted them (false).</summary>
    public bool UsesFixedQueueNumbers { get; private set; }

    private int QueueOf(Role role) => Array.IndexOf(_roleByQueue, role);

    public ulong NegotiatedFeatures => _transport.NegotiatedFeatures;

    public bool DriverReady
    {
        get
        {
            lock (_transport.SyncRoot)
                return _transport.DriverOk;
        }
    }

    public uint TargetPages
    {
        get
        {
            lock (_transport.SyncRoot)
                return _numPages;
        }
    }

    public uint ActualPages
    {
        get
        {
            lock (_transport.SyncRoot)
                return _actual;
        }
    }

    public uint PoisonValue
    {
        get
        {
            lock (_transport.SyncRoot)
                return _poisonValue;
        }
    }

    public BalloonCounters Counters
    {
        get
        {
            lock (_transport.SyncRoot)
                return new BalloonCounters(_inflated, _deflated, _reported, _discardedReported, _droppedPfns, _bitmapMessages,
                    _deferredNotifies, _largestNotifyBytes, _largestNotifyRuns);
        }
    }

    /// <summary>Sets the balloon's target size in 4 KiB pages (QMP `balloon` converts from a guest size).</summary>
    public void SetTargetPages(uint pages)
    {
        lock (_transport.SyncRoot)
        {
            // Signal even when the target is unchanged (as QEMU does): after a deflate on OOM the driver stops
            // chasing the target until the next configuration change, and re-issuing the same size is how a user
            // asks it to try again.
            _numPages = pages;
            _transport.SignalConfigChange();
        }
    }

    private int IndexOf(RamBlock block)
    {
        for (var i = 0; i < _memory.Blocks.Count; i++)
        {
            if (ReferenceEquals(_memory.Blocks[i], block))
                return i;
        }
        throw new ArgumentException($"RAM block {block.Name} is not part of this machine", nameof(block));
    }

    public void ReadConfig(int offset, Span<byte> data)
    {
        Span<byte> config = stackalloc byte[16];
        BinaryPrimitives.WriteUInt32LittleEndian(config, _numPages);
        BinaryPrimitives.WriteUInt32LittleEndian(config[4..], _actual);
        BinaryPrimitives.WriteUInt32LittleEndian(config[8..], _configCmdId);
        BinaryPrimitives.WriteUInt32LittleEndian(config[12..], _poisonValue);
        config.Slice(offset, data.Length).CopyTo(data);
    }

    public void WriteConfig(int offset, ReadOnlySpan<byte> data)
    {
        Span<byte> config = stackalloc byte[16];
        ReadConfig(0, config);
        data.CopyTo(config[offset..]);
        if (offset < 4 || (offset < 12 && offset + data.Length > 8))
            _transport.Log.Warn(Name, VirtioFaults.ReadOnlyRegister, $"driver wrote device-owned config bytes at {offset}");
        var actual = BinaryPrimitives.ReadUInt32LittleEndian(config[4..]);
        if (actual != _actual)
        {
            _actual = actual;
            ActualChanged?.Invoke(actual);
        }
        _poisonValue = BinaryPrimitives.ReadUInt32LittleEndian(config[12..]);
    }

    /// <summary>Queue roles under the spec's fixed numbering and under compacted numbering, for the negotiated features.</summary>
    private (Role?[] Fixed, Role?[] Compacted) RoleMappings()
    {
        Role?[] fixedRoles = [Role.Inflate, Role.Deflate, Role.Stats, Role.FreePage, Role.Reporting, Role.FreeBitmap];
        bool Negotiated(Role role) => role switch
        {
            Role.Stats => Has(STATS_VQ),
            Role.FreePage => Has(FREE_PAGE_HINT),
            Role.Reporting => Has(REPORTING),
            Role.FreeBitmap => Has(FERRY_F_FREE_PAGE_BITMAP),
            _ => true,
        };
        return ([.. fixedRoles.Select(r => Negotiated(r!.Value) ? r : null)], [.. fixedRoles.Where(r => Negotiated(r!.Value))]);
    }

    /// <summary>
    /// Maps queue indices to roles. The spec fixes the indices (an absent queue keeps its number); Linux before 6.11
    /// numbered only the negotiated queues. The device offers every queue, so the two schemes differ only when the
    /// driver leaves a feature out; the queues it made ready tell which scheme it used.
    /// </summary>
    public void Activate()
    {
        var (fixedNumbering, compacted) = RoleMappings();
        bool MatchesReadyQueues(Role?[] mapping) => Enumerable.Range(0, QueueCount)
            .All(q => (q < mapping.Length && mapping[q] is not null) == _transport.Queue(q).Ready);
        UsesFixedQueueNumbers = MatchesReadyQueues(fixedNumbering) || !MatchesReadyQueues(compacted);
        _roleByQueue = UsesFixedQueueNumbers ? fixedNumbering : compacted;
        // Drivers may post buffers before DRIVER_OK (Linux kicks its first stats buffer during probe); the transport
        // ignores notifications until then, so look at every queue now.
        for (var q = 0; q < _roleByQueue.Length; q++)
        {
            if (_roleByQueue[q] is not null && _transport.Queue(q).Ready)
                QueueNotify(q);
        }
    }

    public void Reset()
    {
        // A new driver knows nothing of the old one's balloon: trust nothing, the pages stay discarded but any of
        // them may be used again without a deflate.
        foreach (var bitmap in _balloonBitmaps)
            bitmap.Clear();
        _roleByQueue = [];
        _actual = 0;
        _poisonValue = 0;
        _configCmdId = 0;
        ResetStats();
        ResetHinting();
        ResetFreeBitmap();
    }

    public void QueueNotify(int queueIndex)
    {
        if (queueIndex >= _roleByQueue.Length || _roleByQueue[queueIndex] is not { } role)
        {
            _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"notify for queue {queueIndex}, which the negotiated features do not define");
            return;
        }
        var queue = _transport.Queue(queueIndex);
        var returned = false;
        string? ringFault = null;
        _notifyBytes = _notifyRuns = 0;
        while (true)
        {
            // The budget bounds what one exit costs the vCPU thread (and everyone waiting on the device lock): 256
            // buffers of 1 MiB each once took seconds. The rest waits for the next notify.
            if (_notifyBytes >= NotifyByteBudget || _notifyRuns >= NotifyRunBudget)
            {
                if (queue.PendingCount(out _) > 0)
                    _deferredNotifies++;
                break;
            }
            if (!queue.TryPop(out var chain, out var chainFault, out ringFault))
                break;
            if (chain is null)
            {
                _transport.Log.Warn(Name, chainFault!, $"queue {queueIndex} ({role}): chain dropped");
                returned = true;
                continue;
            }
            returned |= role switch
            {
                Role.Inflate => HandlePages(queue, chain, inflate: true),
                Role.Deflate => HandlePages(queue, chain, inflate: false),
                Role.Stats => HandleStats(queue, chain),
                Role.FreePage => HandleFreePage(queue, chain),
                Role.Reporting => HandleReport(queue, chain),
                Role.FreeBitmap => HandleFreeBitmap(queue, chain),
                _ => false,
            };
        }
        _largestNotifyBytes = Math.Max(_largestNotifyBytes, _notifyBytes);
        _largestNotifyRuns = Math.Max(_largestNotifyRuns, _notifyRuns);
        if (ringFault is not null)
            _transport.NeedsReset(ringFault, $"queue {queueIndex} ({role})");
        if (returned)
            _transport.SignalUsed();
    }

    /// <summary>Reads a chain's device-readable bytes, counted against the notify's budget.</summary>
    private byte[] ReadCounted(SplitQueue queue, DescriptorChain chain, int limit)
    {
        var data = queue.ReadAll(chain, limit);
        _notifyBytes += (ulong)data.Length;
        return data;
    }

    /// <summary>A bitmap message naming more runs than <see cref="MaxRunsPerMessage"/>: refused before anything is applied (logged).</summary>
    private bool TooManyRuns(in BalloonBitmapMessage message, string queueName)
    {
        var runs = PageSet.CountRunsIn(message.Bitmap.Span);
        if (runs <= MaxRunsPerMessage)
            return false;
        _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"bitmap message on the {queueName} queue names {runs} runs of pages (at most {MaxRunsPerMessage})");
        return true;
    }

    /// <summary>Inflate or deflate: a PFN array, or with FERRY_F_PAGE_BITMAP a bitmap message.</summary>
    private bool HandlePages(SplitQueue queue, DescriptorChain chain, bool inflate)
    {
        if (chain.WritableLength > 0 || chain.ReadableLength == 0)
        {
            _transport.Log.Warn(Name, VirtioFaults.WrongDirection, $"{(inflate ? "inflate" : "deflate")} buffer must be device-readable only");
        }
        else if (Has(FERRY_F_PAGE_BITMAP))
        {
            var data = ReadCounted(queue, chain, BalloonBitmapMessage.HeaderSize + BalloonBitmapMessage.MaxBitmapBytes);
            if (!BalloonBitmapMessage.TryParse(data, out var message, out var error) || message.Command != BalloonBitmapMessage.CommandPages)
            {
                _transport.Log.Warn(Name, VirtioFaults.BadRequest, error.Length > 0 ? error : $"command {message.Command} on the {(inflate ? "inflate" : "deflate")} queue");
            }
            else if (!TooManyRuns(message, inflate ? "inflate" : "deflate"))
            {
                _bitmapMessages++;
                foreach (var run in message.Runs())
                    ApplyPages(run.Start, run.Length, inflate);
            }
        }
        else
        {
            if (chain.ReadableLength > MaxPfnBufferBytes || chain.ReadableLength % 4 != 0)
            {
                _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"PFN buffer of {chain.ReadableLength} bytes (a multiple of 4 up to {MaxPfnBufferBytes})");
            }
            else
            {
                var data = ReadCounted(queue, chain, MaxPfnBufferBytes);
                ulong runStart = 0, runLength = 0;
                for (var i = 0; i + 4 <= data.Length; i += 4)
                {
                    var pfn = (ulong)BinaryPrimitives.ReadUInt32LittleEndian(data.AsSpan(i));
                    if (runLength != 0 && pfn == runStart + runLength)
                    {
                        runLength++;
                        continue;
                    }
                    if (runLength != 0)
                        ApplyPages(runStart, runLength, inflate);
                    runStart = pfn;
                    runLength = 1;
                }
                if (runLength != 0)
                    ApplyPages(runStart, runLength, inflate);
            }
        }
        queue.PushUsed(chain.Head, 0);
        return true;
    }

    private void ApplyPages(ulong pfn, ulong count, bool inflate)
    {
        _notifyRuns++;
        var dropped = _memory.ForEachRamRange(pfn << Page.Shift, count << Page.Shift, (block, offset, length) =>
        {
            var bitmap = _balloonBitmaps[IndexOf(block)];
            if (inflate)
            {
                // Only pages not already in the balloon: chains that repeat the same PFNs (every descriptor of a
                // queue may point at one 64 KiB buffer) cost a bitmap test each, not a hole punch each.
                var position = offset >> Page.Shift;
                var end = (offset + length) >> Page.Shift;
                while (bitmap.NextGap(ref position, end, out var start, out var count))
                {
                    block.Discard(start << Page.Shift, count << Page.Shift);
                    PagesDiscarded?.Invoke(block, start << Page.Shift, count << Page.Shift);
                }
                bitmap.AddRange(offset >> Page.Shift, length >> Page.Shift);
                _inflated += length >> Page.Shift;
            }
            else
            {
                bitmap.RemoveRange(offset >> Page.Shift, length >> Page.Shift);
                _deflated += length >> Page.Shift;
            }
        });
        if (dropped > 0)
        {
            _droppedPfns += dropped >> Page.Shift;
            _transport.Log.Warn(Name, VirtioFaults.BufferOutsideRam, $"{dropped >> Page.Shift} PFNs from 0x{pfn:X} are outside guest RAM; dropped");
        }
    }

    /// <summary>Free page reporting: discard the reported blocks when page poisoning allows it.</summary>
    private bool HandleReport(SplitQueue queue, DescriptorChain chain)
    {
        var safe = !Has(PAGE_POISON) || _poisonValue == 0;
        foreach (var segment in chain.Segments)
        {
            _notifyRuns++;
            if (!segment.Writable || !Page.IsAligned(segment.Address) || !Page.IsAligned(segment.Length))
            {
                _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"reported range 0x{segment.Address:X}+0x{segment.Length:X} is not a page-aligned device-writable buffer");
                continue;
            }
            _reported += segment.Length >> Page.Shift;
            if (!safe)
                continue;
            _memory.ForEachRamRange(segment.Address, segment.Length, (block, offset, length) =>
            {
                // Pages the balloon already holds stay as they are; everything else becomes a hole.
                block.Discard(offset, length);
                _discardedReported += length >> Page.Shift;
                PagesDiscarded?.Invoke(block, offset, length);
            });
        }
        queue.PushUsed(chain.Head, 0);
        return true;
    }
}
