using Ferry.Kvm;

namespace Ferry.Devices.Virtio;

/// <summary>
/// A split virtqueue as the device sees it. Everything read from guest memory is hostile: indices, lengths,
/// addresses and chain links are checked before use, and every device write goes through
/// <see cref="GuestMemory"/> so it lands in the VMM dirty bitmap.
/// </summary>
public sealed class SplitQueue
{
    private const ushort DescFlagNext = 1;
    private const ushort DescFlagWrite = 2;
    private const ushort DescFlagIndirect = 4;

    private readonly GuestMemory _memory;

    public SplitQueue(GuestMemory memory, ushort maxSize)
    {
        _memory = memory;
        MaxSize = maxSize;
        Size = maxSize;
    }

    public ushort MaxSize { get; }

    public ushort Size { get; set; }

    public bool Ready { get; set; }

    public ulong DescTable { get; set; }

    public ulong AvailRing { get; set; }

    public ulong UsedRing { get; set; }

    /// <summary>The next available-ring slot the device will read (device state; migrates with the device).</summary>
    public ushort LastAvailIndex { get; set; }

    /// <summary>The device's used index (also in guest memory; kept here so a hostile guest cannot move it).</summary>
    public ushort UsedIndex { get; set; }

    public void Reset()
    {
        Ready = false;
        Size = MaxSize;
        DescTable = AvailRing = UsedRing = 0;
        LastAvailIndex = UsedIndex = 0;
    }

    /// <summary>Checks that the three rings lie inside guest RAM; the fault name, or null when they do.</summary>
    public string? ValidateRings()
    {
        if (Size == 0 || Size > MaxSize)
            return VirtioFaults.BadQueueConfig;
        var ok = _memory.TryTranslate(DescTable, 16UL * Size, out _, out _)
                 && _memory.TryTranslate(AvailRing, 6UL + 2UL * Size, out _, out _)
                 && _memory.TryTranslate(UsedRing, 6UL + 8UL * Size, out _, out _)
                 && DescTable % 16 == 0 && AvailRing % 2 == 0 && UsedRing % 4 == 0;
        return ok ? null : VirtioFaults.RingOutsideRam;
    }

    /// <summary>Entries the driver has made available and the device has not taken yet.</summary>
    public int PendingCount(out string? ringFault)
    {
        ringFault = null;
        var availIndex = _memory.Read<ushort>(AvailRing + 2);
        var pending = (ushort)(availIndex - LastAvailIndex);
        if (pending > Size)
        {
            ringFault = VirtioFaults.AvailIndexRunaway;
            return 0;
        }
        return pending;
    }

    /// <summary>
    /// Takes the next available chain. Returns false when none is pending or the ring itself is broken
    /// (<paramref name="ringFault"/> set: the device needs a reset). When a chain is broken, <paramref name="chainFault"/>
    /// names why, the chain is consumed and returned to the driver with length 0, and the result is null.
    /// </summary>
    public bool TryPop(out DescriptorChain? chain, out string? chainFault, out string? ringFault)
    {
        chain = null;
        chainFault = null;
        ringFault = null;
        if (!Ready || PendingCount(out ringFault) == 0)
            return false;
        var slot = (ulong)(LastAvailIndex % Size);
        var head = _memory.Read<ushort>(AvailRing + 4 + 2 * slot);
        if (head >= Size)
        {
            ringFault = VirtioFaults.DescriptorIndex;
            return false;
        }
        LastAvailIndex++;
        chain = Walk(head, out chainFault);
        if (chain is null)
            PushUsed(head, 0);
        return true;
    }

    private DescriptorChain? Walk(ushort head, out string? fault)
    {
        var segments = new List<BufferSegment>(4);
        var seen = new bool[Size];
        var index = head;
        while (true)
        {
            if (index >= Size)
            {
                fault = VirtioFaults.DescriptorIndex;
                return null;
            }
            if (segments.Count >= Size)
            {
                fault = VirtioFaults.ChainTooLong;
                return null;
            }
            if (seen[index])
            {
                fault = VirtioFaults.ChainLoop;
                return null;
            }
            seen[index] = true;
            var desc = DescTable + 16UL * index;
            var address = _memory.Read<ulong>(desc);
            var length = _memory.Read<uint>(desc + 8);
            var flags = _memory.Read<ushort>(desc + 12);
            var next = _memory.Read<ushort>(desc + 14);
            if ((flags & DescFlagIndirect) != 0)
            {
                fault = VirtioFaults.IndirectNotNegotiated;
                return null;
            }
            // Zero-length buffers are checked too: their address is used (as an empty span) like any other.
            if (!_memory.TryTranslate(address, length, out _, out _))
            {
                fault = VirtioFaults.BufferOutsideRam;
                return null;
            }
            segments.Add(new BufferSegment(address, length, (flags & DescFlagWrite) != 0));
            if ((flags & DescFlagNext) == 0)
                break;
            index = next;
        }
        fault = null;
        return new DescriptorChain(head, [.. segments]);
    }

    /// <summary>Returns a chain to the driver: writes the used element, then publishes the used index.</summary>
    public void PushUsed(ushort head, uint writtenLength)
    {
        var slot = (ulong)(UsedIndex % Size);
        _memory.Write(UsedRing + 4 + 8 * slot, (uint)head);
        _memory.Write(UsedRing + 8 + 8 * slot, writtenLength);
        UsedIndex++;
        Thread.MemoryBarrier(); // the element is visible before the index that publishes it
        _memory.Write(UsedRing + 2, UsedIndex);
    }

    /// <summary>Copies a chain's device-readable bytes, in order, up to <paramref name="limit"/> bytes.</summary>
    public byte[] ReadAll(DescriptorChain chain, int limit)
    {
        var total = (int)Math.Min((ulong)limit, chain.ReadableLength);
        var data = new byte[total];
        var offset = 0;
        foreach (var s in chain.Readable)
        {
            if (offset >= total)
                break;
            var n = (int)Math.Min(s.Length, (uint)(total - offset));
            if (n == 0)
                continue;
            _memory.Read(s.Address, data.AsSpan(offset, n));
            offset += n;
        }
        return data;
    }

    /// <summary>Writes into a chain's device-writable buffers, in order; returns the bytes written.</summary>
    public uint WriteAll(DescriptorChain chain, ReadOnlySpan<byte> data)
    {
        var offset = 0;
        foreach (var s in chain.Writable)
        {
            if (offset >= data.Length)
                break;
            var n = (int)Math.Min(s.Length, (uint)(data.Length - offset));
            if (n == 0)
                continue;
            _memory.Write(s.Address, data.Slice(offset, n));
            offset += n;
        }
        return (uint)offset;
    }
}
