using System.Buffers.Binary;
using Ferry.Devices.Virtio;
using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;

namespace Ferry.Fuzz;

/// <summary>
/// The virtio-mmio transport, its split virtqueues and the balloon device, driven by a hostile driver: the input is
/// a program of operations (register reads and writes of any width, the init sequence with input-chosen features,
/// queue sizes and ring addresses, descriptors and ring entries written into guest RAM, notifications, arbitrary
/// guest memory contents such as PFN arrays, stats and bitmap messages), mixed with the host's requests (target
/// size, hint runs, state save and restore, restore of input bytes as state). Guest RAM is synthetic (memfd blocks:
/// 8 MiB at 0 and 1 MiB at 4 GiB, no KVM). Nothing the guest does may make the device throw.
/// </summary>
public static class VirtioTarget
{
    public const ulong RingBase = 0x10_0000;
    public const ulong BufferBase = 0x40_0000;
    public const ulong HighBase = 1UL << 32;
    private const int Queues = 6;

    public static void Run(byte[] input)
    {
        using var memory = new GuestMemory([RamBlock.Create("ram-low", 0, 8 << 20, 0), RamBlock.Create("ram-high", HighBase, 1 << 20, 1)]);
        var log = new DeviceLog(static _ => { }, maxPerSecondPerKind: 0);
        var balloon = new BalloonDevice(memory);
        var transport = new VirtioMmioTransport(balloon, memory, log);
        balloon.Attach(transport);
        var availIndex = new ushort[Queues];
        var program = new FuzzInput(input);
        Span<byte> scratch = stackalloc byte[8];
        var trace = Environment.GetEnvironmentVariable("FERRY_FUZZ_TRACE") is not null ? System.Diagnostics.Stopwatch.StartNew() : null;
        for (var step = 0; step < 1024 && !program.AtEnd; step++)
        {
            var op = program.U8() % 12;
            if (trace is not null)
                Console.Error.WriteLine($"{trace.Elapsed.TotalMilliseconds:F1} ms: step {step}, op {op}; {balloon.Counters}; {balloon.HintStatus}; faults {string.Join(", ", log.Counts.Select(kv => $"{kv.Key}={kv.Value}"))}");
            switch (op)
            {
                case 0: // 32-bit register or config write
                    BinaryPrimitives.WriteUInt32LittleEndian(scratch, program.U32());
                    transport.Write((ulong)(program.U8() * 4), scratch[..4]);
                    break;
                case 1: // any-width write anywhere in the window
                {
                    var offset = program.U16() % VirtioMmioTransport.WindowSize;
                    var width = 1 + program.U8() % 8;
                    program.Take(width).CopyTo(scratch);
                    transport.Write(offset, scratch[..width]);
                    break;
                }
                case 2: // any-width read anywhere in the window
                {
                    var offset = program.U16() % VirtioMmioTransport.WindowSize;
                    transport.Read(offset, scratch[..(1 + program.U8() % 8)]);
                    break;
                }
                case 3:
                    Negotiate(transport, program.U64(), program.U8(), program.U16(), availIndex);
                    break;
                case 4: // a descriptor, any values
                {
                    var q = program.U8() % Queues;
                    var d = RingBase + (ulong)q * 0x1_0000 + 16UL * program.U8();
                    memory.Write(d, Address(ref program));
                    memory.Write(d + 8, program.U32());
                    memory.Write(d + 12, program.U16());
                    memory.Write(d + 14, program.U16());
                    break;
                }
                case 5: // publish a head in the available ring
                {
                    var q = program.U8() % Queues;
                    var avail = RingBase + (ulong)q * 0x1_0000 + 0x1000;
                    memory.Write(avail + 4 + 2UL * (ulong)(availIndex[q] % 256), program.U16());
                    availIndex[q]++;
                    memory.Write(avail + 2, availIndex[q]);
                    break;
                }
                case 6: // any available index
                {
                    var q = program.U8() % Queues;
                    availIndex[q] = program.U16();
                    memory.Write(RingBase + (ulong)q * 0x1_0000 + 0x1000 + 2, availIndex[q]);
                    break;
                }
                case 7: // QueueNotify, any queue number
                    BinaryPrimitives.WriteUInt32LittleEndian(scratch, program.U8() % 8u);
                    transport.Write(0x50, scratch[..4]);
                    break;
                case 8: // guest memory contents: PFN arrays, stats, bitmap messages, used-ring scribbles
                {
                    var address = Address(ref program);
                    var bytes = program.Take(program.U8());
                    if (memory.TryTranslate(address, (ulong)bytes.Length, out _, out _))
                        memory.Write(address, bytes);
                    break;
                }
                case 9:
                    Host(balloon, program.U8(), program.U32());
                    break;
                case 10: // state round trip: what a migration or snapshot saves must restore
                {
                    var t = transport.SaveState();
                    var b = balloon.SaveState();
                    transport.RestoreState(t);
                    balloon.RestoreState(b);
                    break;
                }
                default: // restore hostile bytes as device state (a migration stream's or a snapshot's)
                {
                    var blob = program.Take(program.U8()).ToArray();
                    try
                    {
                        if ((blob.Length & 1) == 0)
                            transport.RestoreState(blob);
                        else
                            balloon.RestoreState(blob);
                    }
                    catch (InvalidDataException)
                    {
                        return; // a failed restore fails the migration: the device is not used again
                    }
                    break;
                }
            }
        }
    }

    private static ulong Address(ref FuzzInput program) => (program.U8() % 5) switch
    {
        0 => BufferBase + program.U16() * 4UL,
        1 => RingBase + program.U32() % 0x6_0000,
        2 => HighBase + program.U16() * 16UL,
        3 => (8UL << 20) - program.U16(),
        _ => program.U64(),
    };

    /// <summary>The driver's init sequence with the input's features, queue mask and sizes; rings at RingBase + q * 64 KiB.</summary>
    private static void Negotiate(VirtioMmioTransport transport, ulong features, byte queueMask, ushort size, ushort[] availIndex)
    {
        void Set(ulong offset, uint value)
        {
            Span<byte> b = stackalloc byte[4];
            BinaryPrimitives.WriteUInt32LittleEndian(b, value);
            transport.Write(offset, b);
        }
        Set(0x70, 0);
        Set(0x70, 1);
        Set(0x70, 3);
        Set(0x24, 0);
        Set(0x20, (uint)features);
        Set(0x24, 1);
        Set(0x20, (uint)(features >> 32));
        Set(0x70, 11);
        Array.Clear(availIndex);
        for (var q = 0; q < 8; q++)
        {
            if ((queueMask & (1 << q)) == 0)
                continue;
            var ring = RingBase + (ulong)(q % Queues) * 0x1_0000;
            Set(0x30, (uint)q);
            Set(0x38, size == 0 ? 16u : size);
            Set(0x80, (uint)ring);
            Set(0x84, 0);
            Set(0x90, (uint)(ring + 0x1000));
            Set(0x94, 0);
            Set(0xA0, (uint)(ring + 0x2000));
            Set(0xA4, 0);
            Set(0x44, 1);
        }
        Set(0x70, 15);
    }

    private static void Host(BalloonDevice balloon, byte what, uint value)
    {
        switch (what % 5)
        {
            case 0:
                balloon.SetTargetPages(value);
                break;
            case 1:
                try
                {
                    balloon.StartFreePageHinting();
                }
                catch (InvalidOperationException)
                {
                    // documented: the driver has not negotiated hinting
                }
                break;
            case 2:
                balloon.StopFreePageHinting();
                break;
            case 3:
                balloon.FinishFreePageHinting();
                break;
            default:
                _ = balloon.HintStatus;
                _ = balloon.Counters;
                _ = balloon.LastStats;
                break;
        }
    }
}
