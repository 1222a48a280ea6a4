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

    public static void Register(QmpServer server, GuestMachine machine)
    {
        var balloon = machine.Balloon;
        var ram = machine.Memory.TotalBytes;
        BalloonDevice Device() => balloon ?? throw new QmpException("DeviceNotActive", "No balloon device has been activated");
        ulong GuestBytes(uint pages) => ram - Math.Min(ram, (ulong)pages * Page.Size);

        if (balloon is not null)
        {
            // The guest decides how often `actual` changes; like QEMU, report it at most once a second (the latest
            // value), from a timer rather than from the vCPU thread that holds the device lock.
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

        server.Register("balloon", args =>
        {
            var device = Device();
            var value = args?["value"] is JsonValue v && v.TryGetValue<long>(out var n) ? n
                : throw new QmpException(QmpException.GenericError, "Parameter 'value' is missing or not an integer");
            if (value <= 0 || (ulong)value > ram)
                throw new QmpException(QmpException.GenericError, $"Parameter 'value' {value} is outside 1..{ram} (the guest's RAM in bytes)");
            device.SetTargetPages((uint)((ram - (ulong)value) / Page.Size));
            return null;
        });
        server.Register("query-balloon", _ => new JsonObject { ["actual"] = GuestBytes(Device().ActualPages) });
        server.Register("ferry-balloon-info", _ =>
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
                ["host-allocated-bytes"] = machine.Memory.Blocks.Sum(b => (long)b.AllocatedBytes()),
                ["inflated-pages"] = c.InflatedPages,
                ["deflated-pages"] = c.DeflatedPages,
                ["reported-pages"] = c.ReportedPages,
                ["discarded-reported-pages"] = c.DiscardedReportedPages,
                ["dropped-pfns"] = c.DroppedPfns,
                ["bitmap-messages"] = c.BitmapMessages,
            };
        });
        server.Register("ferry-balloon-stats", _ =>
        {
            var stats = Device().RequestStatsAsync(GuestTimeout).GetAwaiter().GetResult();
            var result = new JsonObject();
            foreach (var (tag, value) in stats.OrderBy(kv => kv.Key))
                result[BalloonDevice.StatNames.TryGetValue(tag, out var name) ? name : $"tag-{tag}"] = value;
            return new JsonObject { ["stats"] = result, ["last-update"] = DateTimeOffset.UtcNow.ToUnixTimeSeconds() };
        });
        server.Register("ferry-free-page-hint-start", _ => new JsonObject { ["cmd-id"] = Device().StartFreePageHinting() });
        server.Register("ferry-free-page-hint-stop", _ =>
        {
            Device().StopFreePageHinting();
            return null;
        });
        server.Register("ferry-free-page-hint-done", _ =>
        {
            Device().FinishFreePageHinting();
            return null;
        });
        server.Register("ferry-free-page-hint-status", _ =>
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
        server.Register("ferry-free-page-bitmap", args =>
        {
            var drop = args?["drop-caches"] is JsonValue v && v.TryGetValue<bool>(out var b) && b;
            var r = Device().RequestFreePageBitmapAsync(drop, GuestTimeout).GetAwaiter().GetResult();
            return new JsonObject { ["request-id"] = r.RequestId, ["free-pages"] = r.FreePages, ["dropped-outside-ram-pages"] = r.DroppedOutsideRamPages };
        });
    }
}
