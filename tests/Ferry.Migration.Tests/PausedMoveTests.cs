using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Ram;
using Ferry.Migration.Stream;
using Ferry.TestSupport;
using Xunit;
using Record = Ferry.Migration.Stream.Record;

namespace Ferry.Migration.Tests;

/// <summary>
/// A paused guest moved to a fresh machine through the stream format alone: RAM records and vCPU STATE records,
/// decoded and validated on the other side. The first end-to-end use of the format (devices come next: the
/// machines here have no balloon).
/// </summary>
public sealed class PausedMoveTests
{
    [KvmFact]
    public async Task A_paused_guest_moved_through_the_stream_carries_on()
    {
        using var source = await BootedGuest.StartAsync(memoryMib: 128, cpus: 2, balloon: false);
        await source.Cmd("fill 16");
        await source.Cmd("dirty 50 8");
        await Task.Delay(200);
        source.Machine.Pause();

        using var stream = new MemoryStream();
        var writer = new RecordWriter(stream);
        var blocks = source.Machine.Memory.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray();
        writer.WriteHeader(new StreamHeader(0b11, 1, blocks));
        var counters = new RamSendCounters();
        for (var i = 0; i < source.Machine.Memory.Blocks.Count; i++)
            RamSender.SendFirstPass(source.Machine.Memory.Blocks[i], (ushort)i, writer, counters);
        foreach (var state in source.Machine.CaptureVcpuStates())
            writer.WriteState(StateKind.Vcpu, (ushort)state.Index, "vcpu", VcpuStateCodec.Encode(state));
        writer.WriteEnd();
        source.Machine.Stop("moved");
        // Only what the guest touched travelled: far less than its 128 MiB.
        Assert.InRange(counters.DataPages, 16UL * 256, 40UL * 256);

        var console = new GuestConsole();
        using var target = Machine.Machine.Create(source.Machine.Config, console);
        target.Start(paused: true);
        var reader = new RecordReader(new MemoryStream(stream.ToArray()), target.Memory.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size)).ToArray());
        reader.ReadHeader();
        var states = new List<VcpuState>();
        Record record;
        while ((record = reader.ReadRecord()).Type != RecordType.End)
        {
            if (record.Type == RecordType.State && record.StateKind == StateKind.Vcpu)
                states.Add(VcpuStateCodec.Decode(record.Data.Span));
            else
                Assert.True(RamLoader.Apply(record, target.Memory));
        }
        target.RestoreVcpuStates(states);
        target.Resume();

        var stop = await console.CommandAsync("stop", BootedGuest.Timeout);
        Assert.True(stop.GetProperty("ok").GetBoolean(), stop.ToString());
        var verify = await console.CommandAsync("verify", BootedGuest.Timeout);
        Assert.True(verify.GetProperty("passed").GetBoolean(), verify.ToString());
        Assert.True(verify.GetProperty("pages_checked").GetUInt64() >= 16 * 256 + 8 * 256);
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
