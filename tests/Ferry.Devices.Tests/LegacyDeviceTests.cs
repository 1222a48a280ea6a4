using Ferry.Devices.Legacy;
using Xunit;

namespace Ferry.Devices.Tests;

public sealed class Serial16550Tests
{
    private sealed class Sink : ISerialOutput
    {
        public List<byte> Bytes { get; } = [];

        public void Write(ReadOnlySpan<byte> data) => Bytes.AddRange(data.ToArray());
    }

    private static byte Read(Serial16550 s, ushort offset)
    {
        Span<byte> b = stackalloc byte[1];
        s.Read(offset, b);
        return b[0];
    }

    private static void Write(Serial16550 s, ushort offset, byte value) => s.Write(offset, [value]);

    [Fact]
    public void Output_goes_to_the_sink_and_THR_is_always_empty()
    {
        var sink = new Sink();
        var serial = new Serial16550(sink);
        Write(serial, 0, (byte)'h');
        serial.Write(0, "ello"u8);          // string I/O
        Assert.Equal("hello"u8.ToArray(), sink.Bytes);
        Assert.Equal(0x60, Read(serial, 5) & 0x60);
    }

    [Fact]
    public void Input_sets_data_ready_and_is_read_in_order()
    {
        var serial = new Serial16550(new Sink());
        Assert.Equal(0, Read(serial, 5) & 1);
        serial.EnqueueInput("ab"u8);
        Assert.Equal(1, Read(serial, 5) & 1);
        Assert.Equal((byte)'a', Read(serial, 0));
        Assert.Equal((byte)'b', Read(serial, 0));
        Assert.Equal(0, Read(serial, 5) & 1);
    }

    [Fact]
    public void Divisor_latch_scratch_and_IER_behave_as_Linux_probes_them()
    {
        var sink = new Sink();
        var serial = new Serial16550(sink);
        Write(serial, 1, 0x0F);
        Assert.Equal(0x0F, Read(serial, 1));
        Write(serial, 3, 0x80);             // DLAB on: offsets 0/1 are the divisor
        Write(serial, 0, 0x01);
        Write(serial, 1, 0x02);
        Assert.Equal(0x01, Read(serial, 0));
        Assert.Equal(0x02, Read(serial, 1));
        Write(serial, 3, 0x03);
        Assert.Equal(0x0F, Read(serial, 1));
        Write(serial, 7, 0x5A);
        Assert.Equal(0x5A, Read(serial, 7));
        Assert.Empty(sink.Bytes);           // none of that was output
    }

    [Fact]
    public void Input_beyond_the_FIFO_is_dropped_and_counted_not_grown_without_bound()
    {
        var serial = new Serial16550(new Sink());
        serial.EnqueueInput(new byte[70_000]);
        Assert.Equal(70_000 - 64 * 1024, serial.DroppedInputBytes);
        Assert.Equal(0x03, Read(serial, 5) & 0x03); // data ready + overrun
    }
}

public sealed class BusTests
{
    private sealed class Recorder : IPortDevice
    {
        public List<(ushort, byte[])> Writes { get; } = [];

        public void Read(ushort offset, Span<byte> data) => data.Fill((byte)offset);

        public void Write(ushort offset, ReadOnlySpan<byte> data) => Writes.Add((offset, data.ToArray()));
    }

    [Fact]
    public void Ports_route_by_range_and_unclaimed_ports_read_all_ones()
    {
        var bus = new IoBus();
        var device = new Recorder();
        bus.Register(0x100, 8, device);
        Span<byte> data = stackalloc byte[2];
        bus.Read(0x103, data);
        Assert.Equal([3, 3], data.ToArray());
        bus.Read(0x200, data);
        Assert.Equal([0xFF, 0xFF], data.ToArray());
        bus.Write(0x107, [9]);
        bus.Write(0x108, [9]);
        Assert.Single(device.Writes);
        Assert.Equal(2, bus.UnclaimedAccesses);
        Assert.Throws<ArgumentException>(() => bus.Register(0x104, 8, device));
    }

    [Fact]
    public void The_power_port_reports_the_value_written()
    {
        var values = new List<uint>();
        var port = new PowerPort(values.Add);
        port.Write(0, [0]);
        port.Write(0, [7, 0, 0, 0]);
        Assert.Equal([0u, 7u], values);
    }
}
