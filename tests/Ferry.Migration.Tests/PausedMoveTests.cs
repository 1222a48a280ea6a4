using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Ferry.TestSupport;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>
/// A paused guest moved to a fresh machine through the stream format alone: RAM records, the balloon bitmap, and
/// vCPU and device STATE records, decoded and validated on the other side.
/// </summary>
public sealed class PausedMoveTests
{
    private const int BitmapChunkBytes = 64 * 1024;

    /// <summary>Streams the paused source into a fresh machine (started paused, state restored) and stops the source.</summary>
    private static (Machine.Machine Target, GuestConsole Console, RamSendCounters Counters) Move(Machine.Machine source)
    {
        using var stream = new MemoryStream();
        var writer = new RecordWriter(stream);
        var blocks = source.Memory.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray();
        writer.WriteHeader(new StreamHeader(0b11, 1, blocks));
        var counters = new RamSendCounters();
        var balloon = source.Balloon;
        var trustBalloon = balloon is not null && balloon.DriverReady && balloon.MustTellHost;
        for (var i = 0; i < source.Memory.Blocks.Count; i++)
        {
            var block = source.Memory.Blocks[i];
            var skip = trustBalloon ? balloon!.BalloonBitmap(block) : null;
            if (skip is not null)
            {
                var bytes = System.Runtime.InteropServices.MemoryMarshal.AsBytes(skip.Words);
                for (var offset = 0; offset < bytes.Length; offset += BitmapChunkBytes)
                {
                    var chunk = bytes.Slice(offset, Math.Min(BitmapChunkBytes, bytes.Length - offset));
                    if (chunk.ContainsAnyExcept((byte)0))
                        writer.WriteBalloonBitmap((ushort)i, (ulong)offset * 8, chunk);
                }
            }
            RamSender.SendFirstPass(block, (ushort)i, writer, counters, skip);
        }
        foreach (var state in source.CaptureVcpuStates())
            writer.WriteState(StateKind.Vcpu, (ushort)state.Index, "vcpu", VcpuStateCodec.Encode(state));
        if (balloon is not null)
        {
            writer.WriteState(StateKind.Device, 0, "virtio-mmio", source.BalloonTransport!.SaveState());
            writer.WriteState(StateKind.Device, 0, "virtio-balloon", balloon.SaveState());
        }
        writer.WriteEnd();
        source.Stop("moved");

        var console = new GuestConsole();
        var target = Machine.Machine.Create(source.Config, console);
        target.Start(paused: true);
        var reader = new RecordReader(new MemoryStream(stream.ToArray()), target.Memory.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray());
        reader.ReadHeader();
        var states = new List<VcpuState>();
        Record record;
        while ((record = reader.ReadRecord()).Type != RecordType.End)
        {
            switch (record.Type)
            {
                case RecordType.State when record.StateKind == StateKind.Vcpu:
                    states.Add(VcpuStateCodec.Decode(record.Data.Span));
                    break;
                case RecordType.State when record.StateName == "virtio-mmio":
                    target.BalloonTransport!.RestoreState(record.Data.Span);
                    break;
                case RecordType.State when record.StateName == "virtio-balloon":
                    target.Balloon!.RestoreState(record.Data.Span);
                    break;
                case RecordType.BalloonBitmap:
                    target.Balloon!.ApplyBalloonBitmap(target.Memory.Blocks[record.Block], record.PageOffset / 4096, record.Data.Span);
                    Assert.True(RamLoader.Apply(record, target.Memory));
                    break;
                default:
                    Assert.True(RamLoader.Apply(record, target.Memory));
                    break;
            }
        }
        target.RestoreVcpuStates(states);
        return (target, console, counters);
    }

    [KvmFact]
    public async Task A_paused_guest_moved_through_the_stream_carries_on()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2, balloon: false);
        await source.Cmd("fill 16");
        await source.Cmd("dirty 50 8");
        await Task.Delay(200);
        source.Machine.Pause();
        var (target, console, counters) = Move(source.Machine);
        using (target)
        {
            // Only what the guest touched travelled: far less than its 128 MiB.
            Assert.InRange(counters.DataPages, 16UL * 256, 40UL * 256);
            target.Resume();
            var stop = await console.CommandAsync("stop", BootedGuest.Timeout);
            Assert.True(stop.GetProperty("ok").GetBoolean(), stop.ToString());
            var verify = await console.CommandAsync("verify", BootedGuest.Timeout);
            Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
            Assert.True(verify.GetProperty("pages_checked").GetUInt64() >= 16 * 256 + 8 * 256);
        }
    }

    [KvmFact]
    public async Task A_guest_with_an_inflated_balloon_moves_with_its_device_and_can_deflate_afterwards()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 256, commandLine: "report_delay_ms=600000");
        var balloon = source.Machine.Balloon!;
        while (!balloon.DriverReady)
            await Task.Delay(10);
        await source.Cmd("fill 32");
        balloon.SetTargetPages(64 * 256);
        while (balloon.ActualPages != 64 * 256)
            await Task.Delay(10);
        source.Machine.Pause();
        var (target, console, counters) = Move(source.Machine);
        using (target)
        {
            // Inflated pages are memfd holes, so the first pass never even looks at them (the skip bitmap matters
            // for dirty passes); they arrive as the balloon bitmap instead.
            Assert.True(counters.UntouchedPages >= 64UL * 256, $"{counters.UntouchedPages} untouched pages");
            var targetBalloon = target.Balloon!;
            Assert.Equal(64u * 256, targetBalloon.ActualPages);
            Assert.Equal(64UL * 256, target.Memory.Blocks.Aggregate(0UL, (s, b) => s + targetBalloon.BalloonBitmap(b).CountSet()));
            target.Resume();
            Assert.True((await console.CommandAsync("verify", BootedGuest.Timeout)).GetProperty("passed").GetBoolean());
            // The moved driver and device still talk: deflate through the restored queues.
            targetBalloon.SetTargetPages(0);
            var deadline = DateTime.UtcNow.AddSeconds(30);
            while (targetBalloon.ActualPages != 0 && DateTime.UtcNow < deadline)
                await Task.Delay(10);
            Assert.Equal(0u, targetBalloon.ActualPages);
            Assert.Equal(0UL, target.Memory.Blocks.Aggregate(0UL, (s, b) => s + targetBalloon.BalloonBitmap(b).CountSet()));
            var stats = await targetBalloon.RequestStatsAsync(TimeSpan.FromSeconds(10));
            Assert.True(stats.ContainsKey(4));
        }
    }

    [Fact]
    public void Damaged_vcpu_state_is_refused_with_a_reason()
    {
        var state = new VcpuState { Index = 1, Xsave = new byte[4096], Msrs = [new Ferry.Interop.Kvm.KvmMsrEntry { Index = 0x10, Data = 5 }] };
        var bytes = VcpuStateCodec.Encode(state);
        var back = VcpuStateCodec.Decode(bytes);
        Assert.Equal(1, back.Index);
        Assert.Equal(5UL, back.Msrs[0].Data);
        for (var length = 0; length < bytes.Length; length++)
            Assert.Throws<InvalidDataException>(() => VcpuStateCodec.Decode(bytes.AsSpan(0, length)));
        var huge = (byte[])bytes.Clone();
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(huge.AsSpan(bytes.Length - 4 - 16 - 4096 - 4), 0x7FFF_FFFF);
        Assert.Contains("XSAVE area", Assert.Throws<InvalidDataException>(() => VcpuStateCodec.Decode(huge)).Message, StringComparison.Ordinal);
    }
}
