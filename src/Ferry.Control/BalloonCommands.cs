using System.Text.Json.Nodes;
using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.Machine;

namespace Ferry.Control;

/// <summary>
/// QMP commands for the balloon. `balloon` and `query-balloon` behave as QEMU's (sizes are the guest's memory size
/// in bytes, not the balloon's); Ferry-only commands are prefixed `ferry-`.
/// </summary>
public static class BalloonCommands
{
    private static readonly TimeSpan GuestTimeout = TimeSpan.FromSeconds(10);

    /// <summary>query-balloon's result and BALLOON_CHANGE's data (QEMU's BalloonInfo).</summary>
    private static readonly QmpObjectType BalloonInfo = new("BalloonInfo", [new("actual", QmpType.Int)]);

    public static void Register(QmpServer server, GuestMachine machine)
    {
        var balloon = machine.Balloon;
        var ram = machine.Memory.TotalBytes;
        BalloonDevice Device() => balloon ?? throw new QmpException("DeviceNotActive", "No balloon device has been activated");
        ulong GuestBytes(uint pages) => ram - Math.Min(ram, (ulong)pages * Page.Size);

        server.DeclareEvent("BALLOON_CHANGE", BalloonInfo);
        if (balloon is not null)
        {
            // `actual` changes on the vCPU thread that holds the device lock, where nothing may allocate or wait: it
            // is sampled here once a second and the change emitted from the timer (the server's QEMU rate limit
            // then applies as to any BALLOON_CHANGE).
            var latest = -1L;
            var reported = -1L;
            var timer = new Timer(_ =>
            {
                var value = Interlocked.Read(ref latest);
                if (value >= 0 && value != reported)
                {
                    reported = value;
                    server.Emit("BALLOON_CHANGE", new JsonObject { ["actual"] = GuestBytes((uint)value) });
                }
            }, null, TimeSpan.FromSeconds(1), TimeSpan.FromSeconds(1));
            server.Disposing += timer.Dispose;
            balloon.ActualChanged += actual => Interlocked.Exchange(ref latest, actual);
        }

        server.Register("balloon", QmpArgumentsContext.Default.BalloonArguments, QmpObjectType.Empty, args =>
        {
            var device = Device();
            var value = args.Value;
            if (value <= 0 || (ulong)value > ram)
                throw new QmpException(QmpException.GenericError, $"Parameter 'value' {value} is outside 1..{ram} (the guest's RAM in bytes)");
            device.SetTargetPages((uint)((ram - (ulong)value) / Page.Size));
            return null;
        });
        server.Register("query-balloon", BalloonInfo, () => new JsonObject { ["actual"] = GuestBytes(Device().ActualPages) });
        server.Register("ferry-balloon-info", QmpType.Any, () =>
        {
            var d = Device();
            var c = d.Counters;
            return new JsonObject
            {
                ["driver-ready"] = d.DriverReady,
                ["features"] = d.NegotiatedFeatures,
                ["must-tell-host"] = d.DriverReady && d.MustTellHost,
                ["target-pages"] = d.TargetPages,
                ["actual-pages"] = d.ActualPages,
                ["poison-value"] = d.PoisonValue,
                ["ballooned-pages"] = machine.Memory.Blocks.Sum(b => (long)d.BalloonBitmap(b).Count()),
                // What the host really holds (pagemap: resident private pages, the shared zero page excluded), not RSS.
                ["host-allocated-bytes"] = machine.Memory.Blocks.Sum(b => (long)b.AllocatedBytes()),
                ["discarded-whole-2m-chunks"] = machine.Memory.Blocks.Sum(b => b.WholeChunksDiscarded),
                ["discarded-scattered-pages"] = machine.Memory.Blocks.Sum(b => b.ScatteredPagesDiscarded),
                ["inflated-pages"] = c.InflatedPages,
                ["deflated-pages"] = c.DeflatedPages,
                ["reported-pages"] = c.ReportedPages,
                ["discarded-reported-pages"] = c.DiscardedReportedPages,
                ["dropped-pfns"] = c.DroppedPfns,
                ["bitmap-messages"] = c.BitmapMessages,
                ["deferred-notifies"] = c.DeferredNotifies,
                ["largest-notify-bytes"] = c.LargestNotifyBytes,
                ["largest-notify-runs"] = c.LargestNotifyRuns,
            };
        });
        server.Register("ferry-balloon-stats", QmpType.Any, () =>
        {
            var stats = QmpException.Relay(() => Device().RequestStatsAsync(GuestTimeout).GetAwaiter().GetResult());
            var result = new JsonObject();
            foreach (var (tag, value) in stats.OrderBy(kv => kv.Key))
                result[BalloonDevice.StatNames.TryGetValue(tag, out var name) ? name : $"tag-{tag}"] = value;
            return new JsonObject { ["stats"] = result, ["last-update"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds() };
        });
        server.Register("ferry-free-page-hint-start", QmpType.Any, () => new JsonObject { ["cmd-id"] = QmpException.Relay(() => Device().StartFreePageHinting()) });
        server.Register("ferry-free-page-hint-stop", QmpObjectType.Empty, () =>
        {
            QmpException.Relay(() => Device().StopFreePageHinting());
            return null;
        });
        server.Register("ferry-free-page-hint-done", QmpObjectType.Empty, () =>
        {
            QmpException.Relay(() => Device().FinishFreePageHinting());
            return null;
        });
        server.Register("ferry-free-page-hint-status", QmpType.Any, () =>
        {
            var s = Device().HintStatus;
            return new JsonObject
            {
                ["state"] = s.State.ToString().ToLowerInvariant(),
                ["cmd-id"] = s.CommandId,
                ["hinted-pages"] = s.HintedPages,
                ["dropped-stale-hints"] = s.DroppedStaleHints,
            };
        });
        server.Register("ferry-free-page-bitmap", QmpArgumentsContext.Default.FreePageBitmapArguments, QmpType.Any, args =>
        {
            var drop = args.DropCaches == true;
            var r = QmpException.Relay(() => Device().RequestFreePageBitmapAsync(drop, GuestTimeout).GetAwaiter().GetResult());
            return new JsonObject { ["request-id"] = r.RequestId, ["free-pages"] = r.FreePages, ["dropped-outside-ram-pages"] = r.DroppedOutsideRamPages };
        });
    }
}
