using System.Text.Json.Nodes;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>QEMU's rate limit for noisy events: the first at once, then the latest of each second; other events untouched.</summary>
public sealed class QmpEventThrottleTests
{
    [Fact]
    public async Task A_burst_of_a_limited_event_sends_the_first_now_and_the_last_later()
    {
        var sent = new List<(string Name, int N)>();
        var second = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        using var throttle = new QmpEventThrottle((name, message) =>
        {
            lock (sent)
            {
                sent.Add((name, message["n"]!.GetValue<int>()));
                if (sent.Count(s => s.Name == "BALLOON_CHANGE") == 2)
                    second.TrySetResult();
            }
        });
        for (var n = 1; n <= 5; n++)
        {
            throttle.Emit("BALLOON_CHANGE", new JsonObject { ["n"] = n });
            throttle.Emit("STOP", new JsonObject { ["n"] = n });
        }
        lock (sent)
        {
            Assert.Equal([("BALLOON_CHANGE", 1)], sent.Where(s => s.Name == "BALLOON_CHANGE"));
            Assert.Equal(5, sent.Count(s => s.Name == "STOP"));
        }
        await second.Task.WaitAsync(TimeSpan.FromSeconds(30));
        lock (sent)
            Assert.Equal([("BALLOON_CHANGE", 1), ("BALLOON_CHANGE", 5)], sent.Where(s => s.Name == "BALLOON_CHANGE"));
    }
}
