using System.Collections.Concurrent;
using System.Diagnostics;
using Ferry.Kvm;
using Ferry.Migration.Engine;

namespace Ferry.Migration.Tests.Synthetic;

/// <summary>
/// The postcopy memory seam over a <see cref="SyntheticTarget"/>'s blocks, as userfaultfd would behave: an owed page
/// reads as missing until placed; a "guest" thread reading it reports a fault and blocks until it is placed. Checks
/// the engine's side of the contract as it goes (a page placed twice, or one never owed, is a violation) and keeps
/// the order pages were placed in.
/// </summary>
public sealed class SyntheticPostcopyMemory(IReadOnlyList<RamBlock> blocks, int vcpus) : IPostcopyMemory
{
    private readonly object _gate = new();
    private readonly PageSet[] _owed = [.. blocks.Select(b => new PageSet(b.PageCount))];
    private readonly PageSet[] _missing = [.. blocks.Select(b => new PageSet(b.PageCount))];
    private readonly BlockingCollection<PostcopyFault> _faults = [];
    private readonly List<(int Block, ulong Page)> _order = [];

    public int VcpuCount => vcpus;

    /// <summary>Contract breaches seen (each one line).</summary>
    public ConcurrentQueue<string> Violations { get; } = new();

    public bool Completed { get; private set; }

    /// <summary>Faults reported, per page class the test cares about.</summary>
    public long FaultsReported;

    /// <summary>Where in the placement order a page went (-1: never placed).</summary>
    public int PlacedAt(int block, ulong page)
    {
        lock (_gate)
            return _order.IndexOf((block, page));
    }

    public int PlacedCount
    {
        get
        {
            lock (_gate)
                return _order.Count;
        }
    }

    public void MarkOwed(int block, PageSet owed)
    {
        lock (_gate)
        {
            _owed[block].CopyFrom(owed);
            _missing[block].CopyFrom(owed);
            // What the block held for an owed page is stale: dropped, as userfaultfd registration requires.
            foreach (var run in owed.Runs())
                blocks[block].Discard(run.Start * Page.Size, run.Length * Page.Size);
        }
    }

    public void Place(int block, ulong firstPage, ReadOnlySpan<byte> pages)
    {
        var count = (ulong)pages.Length / Page.Size;
        lock (_gate)
        {
            Check(block, firstPage, count);
            pages.CopyTo(blocks[block].Mapping.GetSpan(firstPage * Page.Size, pages.Length));
            Placed(block, firstPage, count);
        }
    }

    public void PlaceZero(int block, ulong firstPage, ulong count)
    {
        lock (_gate)
        {
            Check(block, firstPage, count);
            blocks[block].Discard(firstPage * Page.Size, count * Page.Size);
            Placed(block, firstPage, count);
        }
    }

    private void Check(int block, ulong firstPage, ulong count)
    {
        if (Completed)
            Violations.Enqueue($"pages placed after Complete: block {block} page {firstPage}");
        for (var p = firstPage; p < firstPage + count; p++)
        {
            if (!_owed[block].Contains(p))
                Violations.Enqueue($"block {block} page {p} placed but never owed");
            else if (!_missing[block].Contains(p))
                Violations.Enqueue($"block {block} page {p} placed twice");
        }
    }

    private void Placed(int block, ulong firstPage, ulong count)
    {
        _missing[block].RemoveRange(firstPage, count);
        for (var p = firstPage; p < firstPage + count; p++)
            _order.Add((block, p));
        Monitor.PulseAll(_gate);
    }

    public bool TryTakeFault(TimeSpan timeout, out PostcopyFault fault) => _faults.TryTake(out fault, timeout);

    public void Complete()
    {
        lock (_gate)
        {
            var missing = _missing.Sum(s => (long)s.Count());
            if (missing != 0)
                Violations.Enqueue($"Complete with {missing} owed pages missing");
            Completed = true;
        }
    }

    private bool _released;

    /// <summary>Every waiting reader gives up (the test is over).</summary>
    public void Release()
    {
        lock (_gate)
        {
            _released = true;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>
    /// A guest access: copies the page into <paramref name="into"/>; when it is owed and missing, reports a fault and
    /// waits until it is placed (at most <paramref name="timeout"/>; false then). Any thread may call it.
    /// </summary>
    public bool Read(int vcpu, int block, ulong page, Span<byte> into, TimeSpan timeout)
    {
        lock (_gate)
        {
            if (_missing[block].Contains(page))
            {
                Interlocked.Increment(ref FaultsReported);
                _faults.Add(new PostcopyFault(block, page, Stopwatch.GetTimestamp(), vcpu));
                var deadline = Stopwatch.GetTimestamp() + (long)(timeout.TotalSeconds * Stopwatch.Frequency);
                while (_missing[block].Contains(page))
                {
                    var left = deadline - Stopwatch.GetTimestamp();
                    if (left <= 0 || _released)
                        return false;
                    Monitor.Wait(_gate, TimeSpan.FromSeconds((double)left / Stopwatch.Frequency));
                }
            }
        }
        blocks[block].Mapping.GetSpan(page * Page.Size, Page.Size).CopyTo(into);
        return true;
    }
}

/// <summary>
/// The destination guest's vCPUs as host threads: each reads pages of a list in a random order (seeded by its
/// index) and checks every page against the source's memory, which no longer changes once postcopy begins (the
/// source guest is paused for good). Started when the target resumes the guest.
/// </summary>
public sealed class ReadingGuest(SyntheticPostcopyMemory memory, SyntheticVm source, int vcpus, IReadOnlyList<(int Block, ulong Page)> pages)
{
    private readonly List<Thread> _threads = [];
    private volatile bool _stop;

    public ConcurrentQueue<string> Errors { get; } = new();

    public long Reads;

    public void Start()
    {
        for (var v = 0; v < vcpus; v++)
        {
            var vcpu = v;
            var thread = new Thread(() => Run(vcpu)) { IsBackground = true, Name = $"reading-guest{vcpu}" };
            _threads.Add(thread);
            thread.Start();
        }
    }

    private void Run(int vcpu)
    {
        var random = new Random(vcpu + 1);
        var order = pages.ToArray();
        random.Shuffle(order);
        var page = new byte[Page.Size];
        // Two rounds: the first faults, the second reads what is in place.
        for (var round = 0; round < 2 && !_stop; round++)
        {
            foreach (var (block, p) in order)
            {
                if (_stop)
                    return;
                if (!memory.Read(vcpu, block, p, page, TimeSpan.FromSeconds(30)))
                {
                    Errors.Enqueue($"vCPU {vcpu}: block {block} page {p} never arrived");
                    return;
                }
                if (!page.AsSpan().SequenceEqual(source.Blocks[block].Mapping.GetSpan(p * Page.Size, Page.Size)))
                    Errors.Enqueue($"vCPU {vcpu}: block {block} page {p} differs from the source's");
                Interlocked.Increment(ref Reads);
            }
        }
    }

    /// <summary>Waits for every thread (they end after two rounds).</summary>
    public void Join()
    {
        foreach (var thread in _threads)
        {
            if (!thread.Join(TimeSpan.FromSeconds(60)))
                Errors.Enqueue($"{thread.Name} did not finish");
        }
    }

    public void Stop()
    {
        _stop = true;
        Join();
    }
}
