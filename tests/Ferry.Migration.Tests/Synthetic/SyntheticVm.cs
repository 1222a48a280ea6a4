using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// A VM without KVM for engine tests: memfd RAM blocks, a "guest" thread that rewrites a working set of pages as
/// fast as its throttle allows, and a dirty log kept by hand (every guest write marks its page). Pausing stops the
/// writer; the one state section is the writer's generation, so the destination can tell what it must hold.
/// </summary>
public sealed class SyntheticVm : IMigrationSource, IDisposable
{
    private readonly RamBlock[] _blocks;
    private readonly object _gate = new();
    private Thread? _writer;
    private volatile bool _paused;
    private volatile bool _stop;
    private volatile int _throttle;
    private bool _logging;

    public SyntheticVm(params ulong[] blockBytes)
        : this(RamBackend.Memfd, blockBytes)
    {
    }

    public SyntheticVm(RamBackend backend, params ulong[] blockBytes)
    {
        _blocks = [.. blockBytes.Select((size, i) => RamBlock.Create(i == 0 ? "ram-low" : $"ram-{i}", (ulong)i << 32, size, i, backend))];
    }

    public IReadOnlyList<RamBlock> Blocks => _blocks;

    public SyntheticBalloon? SyntheticBalloon { get; set; }

    public IMigrationBalloon? Balloon => SyntheticBalloon;

    /// <summary>Pages the writer rewrites, in block 0: [first, first + count).</summary>
    public (ulong First, ulong Count) WorkingSet { get; set; } = (0, 0);

    /// <summary>Pages written per second by the writer at throttle 0 (0 = as fast as it can).</summary>
    public int PagesPerSecond { get; set; }

    public long Generation;
    public int ThrottleChanges;
    public int MaxThrottle;

    public bool IsPaused => _paused;

    public static ulong Pattern(ulong offset, ulong generation) => unchecked(offset * 0x9E3779B97F4A7C15UL + generation * 0xC2B2AE3D27D4EB4FUL + 1);

    /// <summary>Writes a recognisable pattern over pages of a block, as the guest would (marking them dirty).</summary>
    public void Fill(int block, ulong firstPage, ulong pages, ulong generation)
    {
        var b = _blocks[block];
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(b.Mapping.GetSpan(firstPage * 4096, (int)(pages * 4096)));
        for (var i = 0; i < words.Length; i++)
            words[i] = Pattern(firstPage * 4096 + (ulong)i * 8, generation);
        b.VmmDirty.AddRange(firstPage, pages);
    }

    public void SetDirtyLogging(bool enabled)
    {
        lock (_gate)
        {
            if (enabled && !_logging)
            {
                foreach (var b in _blocks)
                    b.VmmDirty.Clear();
            }
            _logging = enabled;
        }
    }

    public bool DirtyLogging
    {
        get
        {
            lock (_gate)
                return _logging;
        }
    }

    /// <summary>Raised at the start of every <see cref="SyncDirtyLog"/> (block index): a test can write pages at an exact point.</summary>
    public event Action<int>? Syncing;

    public void SyncDirtyLog(int block, PageSet into)
    {
        Syncing?.Invoke(block);
        lock (_gate)
        {
            if (!_logging)
                throw new InvalidOperationException("dirty logging is off");
            _blocks[block].VmmDirty.DrainInto(into);
        }
    }

    public void Start()
    {
        _paused = false;
        if (WorkingSet.Count == 0 || _writer is not null)
            return;
        _writer = new Thread(WriteLoop) { IsBackground = true, Name = "synthetic-guest" };
        _writer.Start();
    }

    /// <summary>Raised by <see cref="PauseGuest"/> before the guest stops (a test can look at the destination then).</summary>
    public event Action? Pausing;

    public void PauseGuest()
    {
        if (!_paused)
            Pausing?.Invoke();
        _paused = true;
        // The writer checks the flag before each page; once it acknowledges, no write is in flight.
        lock (_gate)
        {
            while (_writerBusy)
                Monitor.Wait(_gate);
        }
    }

    /// <summary>Raised by <see cref="ResumeGuest"/> while the guest is still paused (its memory is what was saved).</summary>
    public event Action? Resuming;

    public void ResumeGuest()
    {
        if (_paused)
            Resuming?.Invoke();
        _paused = false;
    }

    private bool _writerBusy;

    private void WriteLoop()
    {
        var (first, count) = WorkingSet;
        var page = 0UL;
        var started = System.Diagnostics.Stopwatch.StartNew();
        long written = 0;
        while (!_stop)
        {
            lock (_gate)
            {
                if (_paused)
                {
                    _writerBusy = false;
                    Monitor.PulseAll(_gate);
                }
                else
                {
                    _writerBusy = true;
                }
            }
            if (_paused)
            {
                Thread.Sleep(1);
                continue;
            }
            if (page == 0)
                Interlocked.Increment(ref Generation);
            Fill(0, first + page, 1, (ulong)Interlocked.Read(ref Generation));
            page = (page + 1) % count;
            written++;
            // Rate: the throttle stretches each page's time as vCPU throttling stretches the guest's.
            var rate = PagesPerSecond;
            var throttle = _throttle;
            if (rate > 0 || throttle > 0)
            {
                var perPage = rate > 0 ? 1.0 / rate : 2e-6;
                var due = written * perPage / (1 - throttle / 100.0);
                var ahead = due - started.Elapsed.TotalSeconds;
                if (ahead > 0.001)
                    Thread.Sleep(TimeSpan.FromSeconds(ahead));
            }
            if (throttle != _throttle)
            {
                started.Restart();
                written = 0;
            }
        }
        lock (_gate)
        {
            _writerBusy = false;
            Monitor.PulseAll(_gate);
        }
    }

    public void SetThrottle(int percent)
    {
        _throttle = percent;
        ThrottleChanges++;
        MaxThrottle = Math.Max(MaxThrottle, percent);
    }

    public int Throttle => _throttle;

    public IReadOnlyList<StateSection> SaveState()
    {
        if (!_paused)
            throw new InvalidOperationException("save state of a running VM");
        return [new StateSection(StateKind.Machine, 0, "synthetic", BitConverter.GetBytes(Interlocked.Read(ref Generation)))];
    }

    public void Dispose()
    {
        _stop = true;
        _writer?.Join();
        foreach (var b in _blocks)
            b.Dispose();
    }
}

/// <summary>
/// A balloon without a device: a bitmap per block, a trust flag and a scripted guest answer to hint runs (the
/// ranges it reports as free, or no answer at all).
/// </summary>
public sealed class SyntheticBalloon(SyntheticVm vm) : IMigrationBalloon
{
    private readonly PageSet[] _bitmaps = [.. vm.Blocks.Select(b => new PageSet(b.PageCount))];
    private readonly object _gate = new();
    private bool _runActive, _finishedByGuest;

    public bool DriverReady { get; set; } = true;
    public bool MustTellHost { get; set; } = true;
    public bool CanHint { get; set; } = true;
    public uint PoisonValue { get; set; }

    /// <summary>What the "guest" reports when a run starts (block, page, pages); null = it never answers.</summary>
    public List<(int Block, ulong Page, ulong Pages)>? FreeRanges { get; set; }

    public int RunsStarted;
    public int RunsStopped;
    public int RunsFinished;

    public event Action<int, ulong, ulong>? Hinted;

    public PageSet Bitmap(int block) => _bitmaps[block];

    public event Action<int, ulong, ulong>? Discarded;

    /// <summary>Inflates pages: in the bitmap and gone from the host (a hole).</summary>
    public void Inflate(int block, ulong firstPage, ulong pages)
    {
        _bitmaps[block].AddRange(firstPage, pages);
        vm.Blocks[block].Discard(firstPage * Page.Size, pages * Page.Size);
        Discarded?.Invoke(block, firstPage * Page.Size, pages * Page.Size);
    }

    /// <summary>Free page reporting: the "guest" reports free pages and the host discards them (they read as zero).</summary>
    public void Report(int block, ulong firstPage, ulong pages)
    {
        vm.Blocks[block].Discard(firstPage * Page.Size, pages * Page.Size);
        Discarded?.Invoke(block, firstPage * Page.Size, pages * Page.Size);
    }

    public void CopyBalloonBitmap(int block, PageSet into) => into.CopyFrom(_bitmaps[block]);

    public bool HintRunFinishedByGuest
    {
        get
        {
            lock (_gate)
                return _finishedByGuest;
        }
    }

    /// <summary>
    /// What runs after the first one report, when set (a real guest reports only pages free at the time: a test
    /// whose guest reuses hinted pages must leave them out of later runs).
    /// </summary>
    public List<(int Block, ulong Page, ulong Pages)>? LaterFreeRanges { get; set; }

    public void StartHinting()
    {
        List<(int, ulong, ulong)>? ranges;
        lock (_gate)
        {
            RunsStarted++;
            _runActive = true;
            _finishedByGuest = false;
            ranges = RunsStarted > 1 && LaterFreeRanges is not null ? LaterFreeRanges : FreeRanges;
        }
        if (ranges is null)
            return;
        // The guest answers on its own thread, as a vCPU would; hints are delivered under the lock so StopHinting
        // returning means no hint is in flight (the device's rule).
        var thread = new Thread(() =>
        {
            foreach (var (block, page, pages) in ranges)
            {
                lock (_gate)
                {
                    if (!_runActive)
                        return;
                    Hinted?.Invoke(block, page * 4096, pages * 4096);
                }
            }
            lock (_gate)
                _finishedByGuest = true;
        })
        { IsBackground = true };
        thread.Start();
    }

    public void StopHinting()
    {
        lock (_gate)
        {
            if (_runActive)
                RunsStopped++;
            _runActive = false;
        }
    }

    public void FinishHinting()
    {
        lock (_gate)
        {
            RunsFinished++;
            _runActive = false;
        }
    }
}

/// <summary>A destination without KVM: blocks of the same names and sizes; records the state and the balloon bitmap.</summary>
public sealed class SyntheticTarget : IMigrationTarget, IDisposable
{
    private readonly RamBlock[] _blocks;

    public SyntheticTarget(IReadOnlyList<RamBlock> like)
    {
        _blocks = [.. like.Select(b => RamBlock.Create(b.Name, b.GuestPhysicalAddress, b.Size, b.Slot, b.Backend))];
        BalloonBitmaps = [.. _blocks.Select(b => new PageSet(b.PageCount))];
    }

    public IReadOnlyList<RamBlock> Blocks => _blocks;

    public PageSet[] BalloonBitmaps { get; }

    public IReadOnlyList<StateSection>? State { get; private set; }

    public bool Resumed { get; private set; }

    /// <summary>The postcopy memory seam (null: this target declines postcopy).</summary>
    public IPostcopyMemory? Postcopy { get; set; }

    /// <summary>Raised when the loaded guest is started (a postcopy test starts its reading threads then).</summary>
    public event Action? GuestResumed;

    public void ApplyBalloonBitmap(int block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        var covered = Math.Min((ulong)bitmap.Length * 8, _blocks[block].PageCount - firstPage);
        BalloonBitmaps[block].RemoveRange(firstPage, covered);
        foreach (var run in PageSet.RunsIn(bitmap, firstPage))
        {
            BalloonBitmaps[block].AddRange(run.Start, run.Length);
            _blocks[block].Discard(run.Start * Page.Size, run.Length * Page.Size);
        }
    }

    public void RestoreState(IReadOnlyList<StateSection> sections)
    {
        if (sections.Count != 1 || sections[0].Name != "synthetic")
            throw new InvalidDataException($"expected one 'synthetic' section, got {sections.Count}");
        State = sections;
    }

    public void ResumeGuest()
    {
        Resumed = true;
        GuestResumed?.Invoke();
    }

    public void Dispose()
    {
        foreach (var b in _blocks)
            b.Dispose();
    }
}
