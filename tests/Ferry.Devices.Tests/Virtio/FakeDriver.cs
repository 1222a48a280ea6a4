using System.Buffers.Binary;
using Ferry.Devices.Virtio;
using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;

namespace Ferry.Devices.Tests.Virtio;

/// <summary>
/// A scripted virtio-mmio driver over synthetic guest memory (memfd blocks, no KVM): it negotiates, lays out
/// split rings and posts chains exactly where a test says, including malformed ones.
/// </summary>
internal sealed class FakeDriver : IDisposable
{
    public const ulong RingBase = 0x10_0000;          // rings for queue q at RingBase + q * 0x10000
    public const ulong BufferBase = 0x80_0000;        // scratch buffers
    public const ushort QueueSize = 16;

    private readonly ushort[] _availIndex = new ushort[6];
    private readonly ushort[] _usedSeen = new ushort[6];
    private ushort _nextDesc;

    public FakeDriver(ulong lowMiB = 64, ulong highMiB = 0)
    {
        var blocks = new List<RamBlock> { RamBlock.Create("ram-low", 0, lowMiB << 20, 0) };
        if (highMiB > 0)
            blocks.Add(RamBlock.Create("ram-high", 1UL << 32, highMiB << 20, 1));
        Memory = new GuestMemory(blocks);
        Warnings = [];
        Log = new DeviceLog(Warnings.Add, maxPerSecondPerKind: 1000);
        Balloon = new BalloonDevice(Memory);
        Transport = new VirtioMmioTransport(Balloon, Memory, Log);
        Balloon.Attach(Transport);
        // Touch the driver's own rings and buffers now, so tests that measure host allocation see only the device.
        Memory.GetWriteSpan(RingBase, 6 * 0x1_0000).Clear();
        Memory.GetWriteSpan(BufferBase, 0x2_0000).Clear();
    }

    public GuestMemory Memory { get; }

    public List<string> Warnings { get; }

    public DeviceLog Log { get; }

    public BalloonDevice Balloon { get; }

    public VirtioMmioTransport Transport { get; }

    public uint Reg(ulong offset)
    {
        Span<byte> b = stackalloc byte[4];
        Transport.Read(offset, b);
        return BinaryPrimitives.ReadUInt32LittleEndian(b);
    }

    public void SetReg(ulong offset, uint value)
    {
        Span<byte> b = stackalloc byte[4];
        BinaryPrimitives.WriteUInt32LittleEndian(b, value);
        Transport.Write(offset, b);
    }

    public static ulong AllFeatures(params int[] except)
    {
        ulong f = (1UL << 32) | 0x3F | (1UL << 62) | (1UL << 63);
        foreach (var bit in except)
            f &= ~(1UL << bit);
        return f;
    }

    /// <summary>The whole init sequence; returns the status read back after FEATURES_OK.</summary>
    public uint Negotiate(ulong features, int queues, uint poisonValue = 0) =>
        Negotiate(features, Enumerable.Range(0, queues).ToArray(), poisonValue);

    /// <summary>The init sequence, making ready exactly the given queue indices.</summary>
    public uint Negotiate(ulong features, int[] queueIndices, uint poisonValue = 0)
    {
        SetReg(0x70, 0);
        SetReg(0x70, 1);
        SetReg(0x70, 3);
        SetReg(0x24, 0);
        SetReg(0x20, (uint)features);
        SetReg(0x24, 1);
        SetReg(0x20, (uint)(features >> 32));
        SetReg(0x70, 11);
        var status = Reg(0x70);
        if ((status & 8) == 0)
            return status;
        Array.Clear(_availIndex);
        Array.Clear(_usedSeen);
        _nextDesc = 0;
        foreach (var q in queueIndices)
        {
            Memory.GetWriteSpan(RingBase + (ulong)q * 0x1_0000, 0x3000).Clear(); // fresh, zeroed rings
            SetReg(0x30, (uint)q);
            SetReg(0x38, QueueSize);
            var ring = RingBase + (ulong)q * 0x1_0000;
            SetReg(0x80, (uint)ring);
            SetReg(0x84, 0);
            SetReg(0x90, (uint)(ring + 0x1000));
            SetReg(0x94, 0);
            SetReg(0xA0, (uint)(ring + 0x2000));
            SetReg(0xA4, 0);
            SetReg(0x44, 1);
        }
        if (poisonValue != 0)
            WriteConfig32(12, poisonValue);
        SetReg(0x70, 15);
        return Reg(0x70);
    }

    public uint ReadConfig32(int offset) => Reg(0x100 + (ulong)offset);

    public void WriteConfig32(int offset, uint value) => SetReg(0x100 + (ulong)offset, value);

    public static ulong DescTable(int q) => RingBase + (ulong)q * 0x1_0000;

    /// <summary>Writes a descriptor at <paramref name="index"/> (any values, hostile ones included).</summary>
    public void WriteDescriptor(int q, ushort index, ulong address, uint length, ushort flags, ushort next)
    {
        var d = DescTable(q) + 16UL * index;
        Memory.Write(d, address);
        Memory.Write(d + 8, length);
        Memory.Write(d + 12, flags);
        Memory.Write(d + 14, next);
    }

    /// <summary>Posts a well-formed chain of (address, length, writable) buffers; returns its head.</summary>
    public ushort Post(int q, params (ulong Address, uint Length, bool Writable)[] buffers)
    {
        var head = _nextDesc;
        for (var i = 0; i < buffers.Length; i++)
        {
            var index = (ushort)((_nextDesc + i) % QueueSize);
            var last = i == buffers.Length - 1;
            WriteDescriptor(q, index, buffers[i].Address, buffers[i].Length,
                (ushort)((last ? 0 : 1) | (buffers[i].Writable ? 2 : 0)), (ushort)((index + 1) % QueueSize));
        }
        _nextDesc = (ushort)((_nextDesc + buffers.Length) % QueueSize);
        PublishHead(q, head);
        return head;
    }

    public void PublishHead(int q, ushort head)
    {
        var avail = DescTable(q) + 0x1000;
        Memory.Write(avail + 4 + 2UL * (ulong)(_availIndex[q] % QueueSize), head);
        _availIndex[q]++;
        Memory.Write(avail + 2, _availIndex[q]);
    }

    public void SetAvailIndex(int q, ushort index) => Memory.Write(DescTable(q) + 0x1000 + 2, index);

    public void Kick(int q) => SetReg(0x50, (uint)q);

    /// <summary>Used elements returned since the last call: (head, length).</summary>
    public List<(uint Head, uint Length)> TakeUsed(int q)
    {
        var used = DescTable(q) + 0x2000;
        var index = Memory.Read<ushort>(used + 2);
        var result = new List<(uint, uint)>();
        while (_usedSeen[q] != index)
        {
            var slot = (ulong)(_usedSeen[q] % QueueSize);
            result.Add((Memory.Read<uint>(used + 4 + 8 * slot), Memory.Read<uint>(used + 8 + 8 * slot)));
            _usedSeen[q]++;
        }
        return result;
    }

    public ulong PutPfns(params uint[] pfns)
    {
        var address = BufferBase;
        for (var i = 0; i < pfns.Length; i++)
            Memory.Write(address + 4UL * (ulong)i, pfns[i]);
        return address;
    }

    public void Dispose() => Memory.Dispose();
}
