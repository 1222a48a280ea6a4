using System.Text;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>QMP never drops a reply (issue 16): a client that does not read is not read; a stuck client costs bounded memory and blocks no one.</summary>
public sealed class QmpBackPressureTests : IAsyncLifetime, IDisposable
{
    private FerryLikeServer _ferry = null!;

    public Task InitializeAsync()
    {
        _ferry = new FerryLikeServer();
        _ferry.Server.DeclareEvent("TEST_NOISE");
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _ferry.DisposeAsync();

    public void Dispose() => _ferry.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Fact]
    public async Task Ten_thousand_pipelined_requests_get_ten_thousand_replies_in_order()
    {
        const int count = 10_000;
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        var requests = new StringBuilder();
        for (var i = 0; i < count; i++)
            requests.Append("{\"execute\":\"query-version\",\"id\":").Append(i).Append('}');
        // Written all at once while nothing is read: the server stops reading once its output is full, so the
        // write completes only as the replies below are consumed.
        var writing = client.WriteAsync(requests.ToString());
        await Task.Delay(500);
        for (var i = 0; i < count; i++)
        {
            var reply = await client.ReadAsync();
            Assert.Equal(i, reply["id"]!.GetValue<int>());
            Assert.NotNull(reply["return"]);
        }
        await writing.WaitAsync(TimeSpan.FromSeconds(30));
        Assert.All(_ferry.Server.ConnectionStats(), s => Assert.True(s.QueuedBytes <= 2 * QmpConnection.OutputLimitBytes));
    }

    [Fact]
    public async Task A_client_that_never_reads_costs_bounded_memory_and_blocks_neither_events_nor_other_clients()
    {
        using var stuck = new RawQmpClient(_ferry.Path);
        await stuck.NegotiateAsync();
        stuck.Socket.ReceiveBufferSize = 4096;
        using var other = new RawQmpClient(_ferry.Path);
        await other.NegotiateAsync();
        var payload = new Ferry.Control.Tests.NoiseData();
        // Far more event bytes than the limit; Emit must return at once each time (it is what the VM calls).
        for (var i = 0; i < 20_000; i++)
            _ferry.Server.Emit("TEST_NOISE", payload.Next());
        // The reading client still gets events and is answered (it too may have lost some: it was not reading
        // while 6 MB of events were emitted in a tight loop).
        await other.WriteAsync("""{"execute":"query-status","id":"after"}""");
        var events = 0;
        while (true)
        {
            var message = await other.ReadAsync();
            if (message["event"] is null)
            {
                Assert.Equal("after", message["id"]!.GetValue<string>());
                break;
            }
            events++;
        }
        Assert.True(events > 0);
        var stats = _ferry.Server.ConnectionStats();
        Assert.Contains(stats, s => s.DroppedEvents > 0);
        Assert.All(stats, s => Assert.True(s.QueuedBytes <= 2 * QmpConnection.OutputLimitBytes, $"{s.QueuedBytes} bytes queued"));
    }
}

/// <summary>Event data of a few hundred bytes.</summary>
internal sealed class NoiseData
{
    private int _n;

    public System.Text.Json.Nodes.JsonObject Next() => new() { ["n"] = _n++, ["pad"] = new string('x', 200) };
}
