using Ferry.Devices.Virtio;
using Xunit;

namespace Ferry.Devices.Tests.Virtio;

/// <summary>virtio-mmio v2 registers, negotiation, and a hostile driver: one test per fault class.</summary>
public sealed class TransportTests
{
    private const int Inflate = 0;

    [Fact]
    public void Registers_identify_a_version_2_balloon_offering_VERSION_1_and_the_extensions()
    {
        using var d = new FakeDriver();
        Assert.Equal(0x74726976u, d.Reg(0x000));
        Assert.Equal(2u, d.Reg(0x004));
        Assert.Equal(5u, d.Reg(0x008));
        d.SetReg(0x14, 0);
        Assert.Equal(0x3Fu, d.Reg(0x010));
        d.SetReg(0x14, 1);
        Assert.Equal(1u | (1u << 30) | (1u << 31), d.Reg(0x010));
        d.SetReg(0x30, 0);
        Assert.Equal(256u, d.Reg(0x034));
    }

    [Fact]
    public void FEATURES_OK_is_refused_without_VERSION_1_or_with_features_not_offered()
    {
        using var d = new FakeDriver();
        Assert.Equal(0u, d.Negotiate(FakeDriver.AllFeatures(32), 2) & 8);
        Assert.Equal(0u, d.Negotiate(FakeDriver.AllFeatures() | (1UL << 40), 2) & 8);
        Assert.Equal(15u, d.Negotiate(FakeDriver.AllFeatures(), 6));
        Assert.Equal(FakeDriver.AllFeatures(), d.Transport.NegotiatedFeatures);
    }

    [Fact]
    public void A_config_change_bumps_the_generation_and_sets_interrupt_status_until_acked()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        var generation = d.Reg(0xFC);
        d.Balloon.SetTargetPages(1000);
        Assert.Equal(generation + 1, d.Reg(0xFC));
        Assert.Equal(1000u, d.ReadConfig32(0));
        Assert.Equal(2u, d.Reg(0x60) & 2);
        d.SetReg(0x64, 2);
        Assert.Equal(0u, d.Reg(0x60) & 2);
    }

    [Fact]
    public void Writes_to_read_only_registers_and_odd_sized_accesses_are_ignored_and_reported()
    {
        using var d = new FakeDriver();
        d.SetReg(0x000, 0x12345678);
        d.SetReg(0x034, 7);
        d.Transport.Write(0x070, [1]);
        Assert.Equal(0x74726976u, d.Reg(0x000));
        Assert.Equal(2, d.Log.Count(VirtioFaults.ReadOnlyRegister));
        Assert.Equal(1, d.Log.Count(VirtioFaults.BadAccessSize));
        d.WriteConfig32(0, 99); // num_pages belongs to the device
        Assert.Equal(0u, d.ReadConfig32(0));
        Assert.Equal(3, d.Log.Count(VirtioFaults.ReadOnlyRegister));
        Assert.Contains(d.Warnings, w => w.Contains("read-only register", StringComparison.Ordinal));
    }

    /// <summary>After a dropped chain the device is still serving: a good inflate goes through.</summary>
    private static void AssertStillServing(FakeDriver d)
    {
        d.TakeUsed(Inflate);
        var head = d.Post(Inflate, (d.PutPfns(100), 4, false));
        d.Kick(Inflate);
        Assert.Contains(d.TakeUsed(Inflate), u => u.Head == head);
        Assert.True(d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Contains(100));
    }

    private static void AssertChainDropped(FakeDriver d, string fault, ushort head)
    {
        d.Kick(Inflate);
        Assert.Equal(1, d.Log.Count(fault));
        Assert.Contains(d.Warnings, w => w.Contains(fault, StringComparison.Ordinal));
        Assert.Contains(d.TakeUsed(Inflate), u => u.Head == head && u.Length == 0);
        Assert.Equal(0UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
        Assert.Equal(0u, d.Reg(0x70) & 0x40);
        AssertStillServing(d);
    }

    [Fact]
    public void A_next_index_out_of_range_drops_the_chain()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        d.WriteDescriptor(Inflate, 0, d.PutPfns(5), 4, flags: 1, next: 200);
        d.PublishHead(Inflate, 0);
        AssertChainDropped(d, VirtioFaults.DescriptorIndex, 0);
    }

    [Fact]
    public void A_head_index_out_of_range_sets_needs_reset()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        d.PublishHead(Inflate, 999);
        d.Kick(Inflate);
        Assert.Equal(0x40u, d.Reg(0x70) & 0x40);
        Assert.Equal(1, d.Log.Count(VirtioFaults.DescriptorIndex));
    }

    [Fact]
    public void A_loop_in_a_chain_drops_it()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        d.WriteDescriptor(Inflate, 0, d.PutPfns(5), 4, flags: 1, next: 1);
        d.WriteDescriptor(Inflate, 1, d.PutPfns(5), 4, flags: 1, next: 0);
        d.PublishHead(Inflate, 0);
        AssertChainDropped(d, VirtioFaults.ChainLoop, 0);
    }

    [Fact]
    public void A_chain_longer_than_the_queue_drops_it()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        for (ushort i = 0; i < FakeDriver.QueueSize; i++)
            d.WriteDescriptor(Inflate, i, d.PutPfns(5), 4, flags: 1, next: (ushort)((i + 1) % FakeDriver.QueueSize));
        d.PublishHead(Inflate, 0);
        AssertChainDropped(d, VirtioFaults.ChainTooLong, 0);
    }

    [Theory]
    [InlineData(64UL << 20, 4u)]                // just past the end of RAM
    [InlineData((64UL << 20) - 2, 4u)]          // straddles the end of RAM
    [InlineData(0x1000UL, 0xFFFF_FFFFu)]        // absurd length
    [InlineData(0xD000_0000UL, 4u)]             // in the MMIO window
    [InlineData(0xFFFF_FFFF_FFFF_F000UL, 4096u)] // wraps the address space
    public void A_buffer_outside_RAM_drops_the_chain(ulong address, uint length)
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        var head = d.Post(Inflate, (address, length, false));
        AssertChainDropped(d, VirtioFaults.BufferOutsideRam, head);
    }

    [Fact]
    public void A_buffer_across_two_RAM_blocks_drops_the_chain()
    {
        using var d = new FakeDriver(lowMiB: 3072, highMiB: 4);
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        var head = d.Post(Inflate, ((3UL << 30) - 2048, 8192, false)); // from ram-low across the hole
        AssertChainDropped(d, VirtioFaults.BufferOutsideRam, head);
    }

    [Fact]
    public void An_indirect_descriptor_drops_the_chain()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        d.WriteDescriptor(Inflate, 0, d.PutPfns(5), 16, flags: 4, next: 0);
        d.PublishHead(Inflate, 0);
        AssertChainDropped(d, VirtioFaults.IndirectNotNegotiated, 0);
    }

    [Fact]
    public void A_writable_inflate_buffer_is_refused()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        var head = d.Post(Inflate, (d.PutPfns(5), 4, true));
        AssertChainDropped(d, VirtioFaults.WrongDirection, head);
    }

    [Fact]
    public void An_available_index_running_ahead_sets_needs_reset()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        d.SetAvailIndex(Inflate, 100);
        d.Kick(Inflate);
        Assert.Equal(0x40u, d.Reg(0x70) & 0x40);
        Assert.Equal(1, d.Log.Count(VirtioFaults.AvailIndexRunaway));
        // A reset and a fresh negotiation bring the device back.
        Assert.Equal(15u, d.Negotiate(FakeDriver.AllFeatures(62), 6));
    }

    [Fact]
    public void Rings_outside_RAM_are_refused_at_QueueReady()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 0);
        d.SetReg(0x30, 0);
        d.SetReg(0x80, 0xF000_0000);
        d.SetReg(0x44, 1);
        Assert.Equal(0u, d.Reg(0x44));
        Assert.Equal(0x40u, d.Reg(0x70) & 0x40);
        Assert.Equal(1, d.Log.Count(VirtioFaults.RingOutsideRam));
    }

    [Fact]
    public void Warnings_are_rate_limited_but_every_fault_is_counted()
    {
        var lines = new List<string>();
        var log = new DeviceLog(lines.Add, maxPerSecondPerKind: 5);
        for (var i = 0; i < 1000; i++)
            log.Warn("dev", "kind", "detail");
        Assert.Equal(1000, log.Count("kind"));
        Assert.InRange(lines.Count, 5, 10); // at most 5 per second; the loop may straddle a second boundary
    }

    [Fact]
    public void Through_a_logger_the_rate_limit_is_a_filter_and_warnings_keep_their_wording()
    {
        var logger = new CapturingLogger();
        var log = new DeviceLog(logger, maxPerSecondPerKind: 5);
        for (var i = 0; i < 1000; i++)
            log.Warn("virtio-balloon", "bad-chain", "descriptor 7 points outside RAM");
        Assert.Equal(1000, log.Count("bad-chain"));
        Assert.InRange(logger.Lines.Count, 5, 10);
        Assert.All(logger.Lines, l => Assert.Equal((Microsoft.Extensions.Logging.LogLevel.Warning, "virtio-balloon: bad-chain: descriptor 7 points outside RAM"), l));
    }

    private sealed class CapturingLogger : Microsoft.Extensions.Logging.ILogger
    {
        public List<(Microsoft.Extensions.Logging.LogLevel, string)> Lines { get; } = [];

        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(Microsoft.Extensions.Logging.LogLevel logLevel) => true;

        public void Log<TState>(Microsoft.Extensions.Logging.LogLevel logLevel, Microsoft.Extensions.Logging.EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
            Lines.Add((logLevel, formatter(state, exception)));
    }
}

/// <summary>Faults found in review: each used to throw into the vCPU thread or to leave the device inconsistent.</summary>
public sealed class ReviewedFaultTests
{
    [Fact]
    public void A_zero_length_descriptor_outside_RAM_drops_the_chain_instead_of_throwing()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(62), 6);
        var head = d.Post(0, (0xFFFF_FFFF_0000_0000, 0, false), (d.PutPfns(5), 4, false));
        d.Kick(0);
        Assert.Equal(1, d.Log.Count(VirtioFaults.BufferOutsideRam));
        Assert.Contains(d.TakeUsed(0), u => u.Head == head && u.Length == 0);
        Assert.Equal(0UL, d.Balloon.BalloonBitmap(d.Memory.Blocks[0]).Count());
    }

    [Fact]
    public async Task Taking_a_live_queue_away_sets_needs_reset_and_host_requests_fail_cleanly()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(), 6);
        d.Post(2, (FakeDriver.BufferBase, 10, false));   // stats buffer, now held by the device
        d.Kick(2);
        d.SetReg(0x30, 2);
        d.SetReg(0x44, 0);
        Assert.Equal(0x40u, d.Reg(0x70) & 0x40);
        await Assert.ThrowsAsync<InvalidOperationException>(() => d.Balloon.RequestStatsAsync(TimeSpan.FromSeconds(1)));
    }

    [Fact]
    public void Clearing_status_bits_without_a_reset_cannot_renegotiate_features()
    {
        using var d = new FakeDriver();
        d.Negotiate(FakeDriver.AllFeatures(0, 62), 6);       // without MUST_TELL_HOST
        d.Post(0, (d.PutPfns(7), 4, false));
        d.Kick(0);
        d.SetReg(0x70, 3);                                    // try to go back to feature negotiation
        Assert.Equal(0x40u, d.Reg(0x70) & 0x40);
        Assert.False(d.Balloon.MustTellHost);
    }

    [Fact]
    public void Serial_loopback_output_is_capped_like_input()
    {
        var serial = new Ferry.Devices.Legacy.Serial16550(new NullOutput());
        serial.Write(4, [0x10]);                              // MCR.LOOP
        serial.Write(0, new byte[100_000]);                    // one rep outsb
        Assert.Equal(100_000 - 64 * 1024, serial.DroppedInputBytes);
    }

    private sealed class NullOutput : Ferry.Devices.Legacy.ISerialOutput
    {
        public void Write(ReadOnlySpan<byte> data) { }
    }
    [Fact]
    public void Fuzz_regression_state_restores_after_the_driver_wrote_features_the_device_does_not_offer()
    {
        // Found by the virtio fuzz harness (fuzz/corpus/virtio/regress-unoffered-driver-features): a driver may
        // write any bits to DriverFeatures (FEATURES_OK then refuses them); the saved register must still restore.
        using var d = new FakeDriver();
        d.SetReg(0x70, 1);
        d.SetReg(0x70, 3);
        d.SetReg(0x24, 0);
        d.SetReg(0x20, 0xFFFF_FFFF);
        var saved = d.Transport.SaveState();

        using var e = new FakeDriver();
        e.Transport.RestoreState(saved);
        Assert.Equal(saved, e.Transport.SaveState());
        e.SetReg(0x70, 11);
        Assert.Equal(0u, e.Reg(0x70) & VirtioBits.StatusFeaturesOk);
    }
}
