using System.Collections.Concurrent;

namespace Ferry.Devices.Virtio;

/// <summary>
/// Warnings about what a driver did wrong, rate-limited per fault kind so a hostile guest cannot flood the host's
/// log, and counted per kind so tests and statistics can see every fault.
/// </summary>
public sealed class DeviceLog(Action<string>? sink = null, int maxPerSecondPerKind = 5)
{
    private readonly ConcurrentDictionary<string, long> _counts = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (long Second, int Emitted)> _window = new(StringComparer.Ordinal);
    private readonly Action<string> _sink = sink ?? (line => Console.Error.WriteLine(line));

    public long Count(string kind) => _counts.TryGetValue(kind, out var n) ? n : 0;

    public IReadOnlyDictionary<string, long> Counts => _counts;

    public void Warn(string device, string kind, string detail)
    {
        _counts.AddOrUpdate(kind, 1, (_, n) => n + 1);
        var second = Environment.TickCount64 / 1000;
        var emit = false;
        _window.AddOrUpdate(kind, _ => { emit = true; return (second, 1); }, (_, w) =>
        {
            if (w.Second != second)
            {
                emit = true;
                return (second, 1);
            }
            emit = w.Emitted < maxPerSecondPerKind;
            return (second, w.Emitted + 1);
        });
        if (emit)
            _sink($"ferry: warning: {device}: {kind}: {detail}");
    }
}
