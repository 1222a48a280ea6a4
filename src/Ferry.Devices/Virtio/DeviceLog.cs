using System.Collections.Concurrent;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Ferry.Devices.Virtio;

/// <summary>
/// Warnings about what a driver did wrong, rate-limited per fault kind so a hostile guest cannot flood the host's
/// log, and counted per kind so tests and statistics can see every fault. The rate limit is a filter in front of
/// the logger: a warning over the limit is counted but never reaches it.
/// </summary>
public sealed partial class DeviceLog
{
    private readonly ConcurrentDictionary<string, long> _counts = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, (long Second, int Emitted)> _window = new(StringComparer.Ordinal);
    private readonly ILogger _logger;
    private readonly Action<string>? _sink;
    private readonly int _maxPerSecondPerKind;

    /// <param name="logger">Where warnings go (the VMM's logger; none: counted only).</param>
    public DeviceLog(ILogger? logger = null, int maxPerSecondPerKind = 5)
    {
        _logger = logger ?? NullLogger.Instance;
        _maxPerSecondPerKind = maxPerSecondPerKind;
    }

    /// <summary>Warnings as lines ("ferry: warning: DEVICE: KIND: DETAIL") into a sink, for tests.</summary>
    public DeviceLog(Action<string> sink, int maxPerSecondPerKind = 5) : this((ILogger?)null, maxPerSecondPerKind) => _sink = sink;

    public long Count(string kind) => _counts.TryGetValue(kind, out var n) ? n : 0;

    public IReadOnlyDictionary<string, long> Counts => _counts;

    public void Warn(string device, string kind, string detail)
    {
        _counts.AddOrUpdate(kind, 1, (_, n) => n + 1);
        if (!Admit(kind))
            return;
        if (_sink is not null)
            _sink($"ferry: warning: {device}: {kind}: {detail}");
        else
            LogFault(_logger, device, kind, detail);
    }

    /// <summary>The rate limit: at most <see cref="_maxPerSecondPerKind"/> warnings of one kind per second.</summary>
    private bool Admit(string kind)
    {
        var second = Environment.TickCount64 / 1000;
        var emit = false;
        _window.AddOrUpdate(kind, _ => { emit = true; return (second, 1); }, (_, w) =>
        {
            if (w.Second != second)
            {
                emit = true;
                return (second, 1);
            }
            emit = w.Emitted < _maxPerSecondPerKind;
            return (second, w.Emitted + 1);
        });
        return emit;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "{Device}: {Kind}: {Detail}")]
    private static partial void LogFault(ILogger logger, string device, string kind, string detail);
}
