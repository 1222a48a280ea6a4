using System.Text.Json.Nodes;

namespace Ferry.Control;

/// <summary>
/// QEMU's rate limit for noisy events (monitor_qapi_event_conf): the first one goes out at once; within the next
/// second later ones only replace a pending copy, which goes out when the second ends (so the last value always
/// arrives, at most one event per second). The same events and interval as QEMU; the others are not limited.
/// </summary>
internal sealed class QmpEventThrottle(Action<string, JsonObject> send) : IDisposable
{
    public static readonly TimeSpan Interval = TimeSpan.FromSeconds(1);

    /// <summary>The events QEMU rate-limits. Ferry emits BALLOON_CHANGE; the rest are listed so a future one is limited as QEMU does.</summary>
    public static readonly IReadOnlySet<string> Limited = new HashSet<string>(StringComparer.Ordinal)
    {
        "RTC_CHANGE", "WATCHDOG", "BALLOON_CHANGE", "QUORUM_REPORT_BAD", "QUORUM_FAILURE", "VSERPORT_CHANGE", "MEMORY_DEVICE_SIZE_CHANGE",
    };

    private sealed class State
    {
        public required Timer Timer;
        public JsonObject? Pending;
    }

    private readonly Dictionary<string, State> _states = new(StringComparer.Ordinal);
    private readonly Lock _lock = new();
    private bool _disposed;

    /// <summary>Sends <paramref name="message"/> now, later, or folds it into a pending one.</summary>
    public void Emit(string name, JsonObject message)
    {
        if (!Limited.Contains(name))
        {
            send(name, message);
            return;
        }
        lock (_lock)
        {
            if (_disposed)
                return;
            if (_states.TryGetValue(name, out var state))
            {
                state.Pending = message;
                return;
            }
            _states[name] = new State { Timer = new Timer(_ => Elapsed(name), null, Interval, Timeout.InfiniteTimeSpan) };
        }
        send(name, message);
    }

    private void Elapsed(string name)
    {
        JsonObject? pending;
        lock (_lock)
        {
            if (_disposed || !_states.TryGetValue(name, out var state))
                return;
            pending = state.Pending;
            state.Pending = null;
            if (pending is null)
            {
                state.Timer.Dispose();
                _states.Remove(name);
                return;
            }
            state.Timer.Change(Interval, Timeout.InfiniteTimeSpan);
        }
        send(name, pending);
    }

    public void Dispose()
    {
        lock (_lock)
        {
            _disposed = true;
            foreach (var state in _states.Values)
                state.Timer.Dispose();
            _states.Clear();
        }
    }
}
