using System.Text;
using System.Text.Json.Nodes;
using Ferry.Machine;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>The scanner alone: message boundaries, limits and recovery, byte by byte.</summary>
public sealed class QmpMessageScannerTests
{
    private static List<string> Scan(params string[] chunks)
    {
        var scanner = new QmpMessageScanner();
        var output = new List<QmpScanned>();
        foreach (var chunk in chunks)
            scanner.Feed(Encoding.UTF8.GetBytes(chunk), output);
        return [.. output.Select(o => o.Message is { } m ? Encoding.UTF8.GetString(m) : $"ERROR {o.Error}")];
    }

    [Fact]
    public void Messages_need_no_newline_and_may_share_or_split_reads()
    {
        Assert.Equal(["""{"a":1}""", """{"b":[2,{"c":"}"}]}"""], Scan("""{"a":1}{"b":[2,{"c":"}"}]}"""));
        Assert.Equal(["{\"a\":\n 1\n}"], Scan("{\"a\":\n", " 1\n}"));
        var bytes = """{"execute":"x","arguments":{"s":"q\"}]{"}}""";
        Assert.Equal([bytes], Scan([.. bytes.Select(c => c.ToString())]));
    }

    [Fact]
    public void Top_level_scalars_and_stray_closers_are_messages_of_their_own()
    {
        Assert.Equal(["42", "\"s\"", "}", "true"], Scan("42 \"s\"}true\n"));
    }

    [Fact]
    public void Nesting_past_the_limit_is_reported_once_then_skipped_until_it_balances()
    {
        var deep = new string('[', QmpMessageScanner.MaxDepth + 1) + new string(']', QmpMessageScanner.MaxDepth + 1);
        Assert.Equal(["ERROR JSON nesting depth limit exceeded", "{}"], Scan(deep, "{}"));
    }

    [Fact]
    public void A_message_past_the_size_limit_is_reported_once_and_nothing_more_is_held()
    {
        var scanner = new QmpMessageScanner();
        var output = new List<QmpScanned>();
        scanner.Feed("{\"x\":\""u8, output);
        var chunk = new byte[64 * 1024];
        Array.Fill(chunk, (byte)'a');
        for (var i = 0; i < 40; i++)
            scanner.Feed(chunk, output);
        Assert.True(scanner.PendingBytes <= QmpMessageScanner.MaxMessageBytes);
        scanner.Feed("\"}{}"u8, output);
        Assert.Equal(["JSON token size limit exceeded", null], output.Select(o => o.Error));
        Assert.Equal("{}", Encoding.UTF8.GetString(output[1].Message!));
    }

    [Fact]
    public void A_control_character_resets_the_parser_as_the_qmp_spec_says()
    {
        Assert.Equal(["ERROR JSON parse error, stray '\\u001B'", """{"ok":1}"""], Scan("{\"execute\": \"x\u001b junk } ]\n{\"ok\":1}"));
        Assert.Equal(["ERROR JSON parse error, stray '\\u000A'", """{"ok":1}"""], Scan("{\"a\":\"line\nbreak\"}{\"ok\":1}"));
    }
}

/// <summary>QMP as QEMU's clients see it: greeting, framing, errors, strict arguments, introspection, HMP.</summary>
public sealed class QmpProtocolTests : IAsyncLifetime, IDisposable
{
    private FerryLikeServer _ferry = null!;

    public Task InitializeAsync()
    {
        _ferry = new FerryLikeServer();
        return Task.CompletedTask;
    }

    public async Task DisposeAsync() => await _ferry.DisposeAsync();

    public void Dispose() => _ferry.DisposeAsync().AsTask().GetAwaiter().GetResult();

    [Fact]
    public async Task Greeting_names_the_version_and_offers_no_capability()
    {
        using var client = new RawQmpClient(_ferry.Path);
        var greeting = await client.ReadAsync();
        var version = greeting["QMP"]!["version"]!;
        Assert.Equal(7, version["qemu"]!["major"]!.GetValue<int>());
        Assert.Equal(2, version["qemu"]!["minor"]!.GetValue<int>());
        Assert.StartsWith("Ferry 0.", version["package"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Empty(greeting["QMP"]!["capabilities"]!.AsArray());
        Assert.Equal("Expecting capabilities negotiation with 'qmp_capabilities'", RawQmpClient.Desc(await client.CallAsync("""{"execute":"query-status"}""")));
        Assert.Equal("Capability 'oob' not available", RawQmpClient.Desc(await client.CallAsync("""{"execute":"qmp_capabilities","arguments":{"enable":["oob"]}}""")));
        Assert.NotNull((await client.CallAsync("""{"execute":"qmp_capabilities","arguments":{}}"""))["return"]);
        var again = await client.CallAsync("""{"execute":"qmp_capabilities"}""");
        Assert.Equal("CommandNotFound", again["error"]!["class"]!.GetValue<string>());
        Assert.Equal("Capabilities negotiation is already complete, command ignored", RawQmpClient.Desc(again));
        Assert.True(JsonNode.DeepEquals(version, (await client.CallAsync("""{"execute":"query-version"}"""))["return"]));
    }

    [Fact]
    public async Task Requests_without_newlines_several_per_write_or_split_are_all_answered_in_order()
    {
        using var client = new RawQmpClient(_ferry.Path);
        await client.ReadAsync();
        await client.WriteAsync("""{"execute":"qmp_capabilities","arguments":{}}{"execute":"query-status","id":1}""");
        await client.WriteAsync("{\"execute\":\n\"query-status\",");
        await client.WriteAsync("\n\"id\":2}{bad json}{\"execute\":\"stop\",\"id\":3}");
        Assert.NotNull((await client.ReadAsync())["return"]);
        Assert.Equal(1, (await client.ReadAsync())["id"]!.GetValue<int>());
        Assert.Equal(2, (await client.ReadAsync())["id"]!.GetValue<int>());
        var error = await client.ReadAsync();
        Assert.StartsWith("JSON parse error, ", RawQmpClient.Desc(error), StringComparison.Ordinal);
        Assert.Null(error["id"]);
        var stop = await client.ReadAsync();
        Assert.Equal("STOP", stop["event"]?.GetValue<string>());
        Assert.Equal(3, (await client.ReadAsync())["id"]!.GetValue<int>());
    }

    [Theory]
    [InlineData("""{"execute":"stop","arguments":{"x":1}}""", "Parameter 'x' is unexpected")]
    [InlineData("""{"execute":"human-monitor-command","arguments":{}}""", "Parameter 'command-line' is missing")]
    [InlineData("""{"execute":"human-monitor-command","arguments":{"command-line":5}}""", "Invalid parameter type for 'command-line', expected: string")]
    [InlineData("""{"execute":"human-monitor-command","arguments":{"command-line":"info status","cpu-index":"0"}}""", "Invalid parameter type for 'cpu-index', expected: integer")]
    [InlineData("""{"execute":"migrate-set-parameters","arguments":{"downtime-limit":1.5}}""", "Invalid parameter type for 'downtime-limit', expected: integer")]
    [InlineData("""{"execute":"query-status","id":"x","foo":1}""", "QMP input member 'foo' is unexpected")]
    [InlineData("""{"execute":7}""", "QMP input member 'execute' must be a string")]
    [InlineData("""{"execute":"a","execute":"b"}""", "JSON parse error, ")]
    public async Task Every_argument_is_checked_with_qemus_words(string request, string desc)
    {
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        var reply = await client.CallAsync(request);
        Assert.Equal("GenericError", reply["error"]?["class"]?.GetValue<string>());
        Assert.StartsWith(desc, RawQmpClient.Desc(reply), StringComparison.Ordinal);
        Assert.Equal(MachineStatusNames.ToQmp(Ferry.Machine.MachineStatus.Running), _ferry.Machine.Status.ToQmp());
    }

    [Fact]
    public async Task Random_garbage_never_ends_the_connection_and_a_control_character_resynchronises_it()
    {
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        var random = new Random(15);
        var alphabet = "{}[]\":,\\ \n\t0123456789.-eEtrufalsn\"abc'\u00e9";
        for (var round = 0; round < 50; round++)
        {
            var junk = new string([.. Enumerable.Range(0, random.Next(1, 200)).Select(_ => alphabet[random.Next(alphabet.Length)])]);
            await client.WriteAsync(junk + "\u0001\n" + $"{{\"execute\":\"query-status\",\"id\":{round}}}");
            while (true)
            {
                var reply = await client.ReadAsync();
                if (reply["id"]?.GetValueKind() == System.Text.Json.JsonValueKind.Number && reply["id"]!.GetValue<int>() == round && reply["return"] is not null)
                    break;
                Assert.True(reply["error"] is not null || reply["return"] is not null || reply["event"] is not null, reply.ToJsonString());
            }
        }
    }

    [Fact]
    public async Task Typed_records_bind_their_arguments()
    {
        var seen = new List<BalloonArguments>();
        _ferry.Server.Register("test-balloon", QmpArgumentsContext.Default.BalloonArguments, QmpObjectType.Empty, a => { seen.Add(a); return null; });
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        Assert.Equal("Parameter 'extra' is unexpected", RawQmpClient.Desc(await client.CallAsync("""{"execute":"test-balloon","arguments":{"value":1,"extra":1}}""")));
        Assert.Equal("Invalid parameter type for 'value', expected: integer", RawQmpClient.Desc(await client.CallAsync("""{"execute":"test-balloon","arguments":{"value":"1"}}""")));
        Assert.NotNull((await client.CallAsync("""{"execute":"test-balloon","arguments":{"value":1073741824}}"""))["return"]);
        Assert.Equal([new BalloonArguments { Value = 1073741824 }], seen);
    }

    [Fact]
    public async Task Introspection_lists_commands_events_and_each_commands_argument_type()
    {
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        var commands = (await client.CallAsync("""{"execute":"query-commands"}"""))["return"]!.AsArray().Select(c => c!["name"]!.GetValue<string>()).ToList();
        Assert.Subset(commands.ToHashSet(), new HashSet<string> { "qmp_capabilities", "query-version", "query-commands", "query-events", "query-qmp-schema", "human-monitor-command", "query-status", "stop", "cont", "quit", "migrate-set-parameters" });
        var events = (await client.CallAsync("""{"execute":"query-events"}"""))["return"]!.AsArray().Select(c => c!["name"]!.GetValue<string>());
        Assert.Equal(["RESUME", "SHUTDOWN", "STOP"], events);
        var schema = (await client.CallAsync("""{"execute":"query-qmp-schema"}"""))["return"]!.AsArray().Select(e => e!.AsObject()).ToList();
        var byName = schema.ToDictionary(e => e["name"]!.GetValue<string>());
        foreach (var command in commands)
        {
            var entry = byName[command];
            Assert.Equal("command", entry["meta-type"]!.GetValue<string>());
            Assert.Equal("object", byName[entry["arg-type"]!.GetValue<string>()]["meta-type"]!.GetValue<string>());
            Assert.True(byName.ContainsKey(entry["ret-type"]!.GetValue<string>()));
        }
        var hmpArgs = byName[byName["human-monitor-command"]["arg-type"]!.GetValue<string>()]["members"]!.AsArray();
        Assert.Equal("""[{"name":"command-line","type":"str"},{"name":"cpu-index","type":"int","default":null}]""", hmpArgs.ToJsonString());
        Assert.Equal("builtin", byName["int"]["meta-type"]!.GetValue<string>());
        Assert.Equal("event", byName["STOP"]["meta-type"]!.GetValue<string>());
    }

    [Fact]
    public async Task Hmp_info_commands_answer_in_qemus_text()
    {
        using var client = new RawQmpClient(_ferry.Path);
        await client.NegotiateAsync();
        async Task<string> Hmp(string line) =>
            (await client.CallAsync(new JsonObject { ["execute"] = "human-monitor-command", ["arguments"] = new JsonObject { ["command-line"] = line } }.ToJsonString()))["return"]!.GetValue<string>();
        Assert.Equal("VM status: running\r\n", await Hmp("info status"));
        _ferry.Machine.PauseGuest();
        Assert.Equal("VM status: paused\r\n", await Hmp("info status"));
        _ferry.Machine.EndMachine(ShutdownCause.HostQmpQuit, "test");
        Assert.Equal("VM status: paused (shutdown)\r\n", await Hmp("info status"));
        Assert.Equal("Error: The command query-balloon has not been found\r\n", await Hmp("info balloon"));
        Assert.Equal("unknown command: 'frobnicate'\r\n", await Hmp("frobnicate now"));
        Assert.Equal("unknown command: 'info frob'\r\n", await Hmp("info frob"));

        // The text follows whatever the queries answer.
        _ferry.Server.Register("query-balloon", QmpType.Any, () => new JsonObject { ["actual"] = 1L << 30 });
        Assert.Equal("balloon: actual=1024\r\n", await Hmp("info balloon"));
        _ferry.Server.Register("query-migrate", QmpType.Any, () => JsonNode.Parse("""
            {"status":"completed","total-time":1500,"setup-time":2,"expected-downtime":30,"downtime":12,
             "ram":{"transferred":10485760,"remaining":0,"total":1073741824,"duplicate":5,"normal":2560,"normal-bytes":10485760,
                    "dirty-sync-count":3,"dirty-pages-rate":0,"mbps":55.5,"page-size":4096}}
            """));
        Assert.Equal(
            "Migration status: completed\r\ntotal time: 1500 ms\r\nexpected downtime: 30 ms\r\ndowntime: 12 ms\r\nsetup: 2 ms\r\n" +
            "transferred ram: 10240 kbytes\r\nthroughput: 55.50 mbps\r\nremaining ram: 0 kbytes\r\ntotal ram: 1048576 kbytes\r\n" +
            "duplicate: 5 pages\r\nnormal: 2560 pages\r\nnormal bytes: 10240 kbytes\r\ndirty sync count: 3\r\npage size: 4 kbytes\r\n",
            await Hmp("info migrate"));
    }
}
