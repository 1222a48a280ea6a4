using Ferry.Control;
using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>The engine's reasons rendered for query-migrate: the exact strings clients have always seen.</summary>
public sealed class MigrationQmpTextTests
{
    [Theory]
    [InlineData(BalloonSkipReason.On, "on")]
    [InlineData(BalloonSkipReason.NoBalloon, "off: the machine has no balloon")]
    [InlineData(BalloonSkipReason.CapabilityOff, "off: capability ferry-balloon-skip is off")]
    [InlineData(BalloonSkipReason.DriverNotReady, "off: the guest's balloon driver is not ready")]
    [InlineData(BalloonSkipReason.NoMustTellHost, "off: the guest did not negotiate MUST_TELL_HOST, so ballooned pages are sent as ordinary pages")]
    public void Balloon_skip(BalloonSkipReason reason, string text) => Assert.Equal(text, MigrationQmpText.BalloonSkip(reason));

    [Theory]
    [InlineData(FreePageHintReason.On, 0u, "on")]
    [InlineData(FreePageHintReason.NoBalloon, 0u, "off: the machine has no balloon")]
    [InlineData(FreePageHintReason.CapabilityOff, 0u, "off: capability ferry-free-page-hint is off")]
    [InlineData(FreePageHintReason.NotNegotiated, 0u, "off: the guest did not negotiate FREE_PAGE_HINT")]
    [InlineData(FreePageHintReason.GuestPoisons, 0xAAu, "off: the guest poisons free pages with 0x000000AA, so they must be sent")]
    [InlineData(FreePageHintReason.GuestPaused, 0u, "off: the guest is paused (it cannot answer)")]
    public void Free_page_hint(FreePageHintReason reason, uint poison, string text) => Assert.Equal(text, MigrationQmpText.FreePageHint(reason, poison));

    [Theory]
    [InlineData(AutoConvergeStep.Off, 0, "; auto-converge is off, so the migration keeps iterating")]
    [InlineData(AutoConvergeStep.Watching, 0, "")]
    [InlineData(AutoConvergeStep.Throttled, 30, "; auto-converge throttles the vCPUs to 30%")]
    public void Not_converging(AutoConvergeStep step, int throttle, string tail)
    {
        // 2560 pages/s of 4 KiB = 10 MiB/s; 20 MiB/s bandwidth.
        var why = new NotConverging(3, NotConvergingReason.OverDowntimeLimit, 1234.4, 300, 5000, 2560, 20 << 20, step, throttle);

        Assert.Equal(
            "pass 3: expected downtime 1234 ms is over downtime-limit 300 ms (5000 dirty pages, dirty rate 10 MiB/s, bandwidth 20 MiB/s)" + tail,
            MigrationQmpText.NotConverging(why));
    }
}
