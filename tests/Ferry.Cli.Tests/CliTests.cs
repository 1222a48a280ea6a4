using System.Diagnostics;
using System.Net.Sockets;
using System.Text;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>The ferry command as a user runs it: a separate process, its exit code and its one-line errors.</summary>
public sealed class CliTests
{
    private static readonly string FerryDll = typeof(Program).Assembly.Location;

    internal static (int Code, string Stdout, string Stderr) Ferry(string stdin, IDictionary<string, string>? env, params string[] args)
    {
        var psi = new ProcessStartInfo("dotnet", [FerryDll, .. args])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            RedirectStandardInput = true,
        };
        foreach (var (k, v) in env ?? new Dictionary<string, string>())
            psi.Environment[k] = v;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        p.StandardInput.Write(stdin);
        p.StandardInput.Close();
        if (!p.WaitForExit(120_000))
        {
            p.Kill(entireProcessTree: true);
            Assert.Fail("ferry did not exit within 120 s");
        }
        return (p.ExitCode, stdout.Result, stderr.Result);
    }

    /// <summary>Starts `ferry run` with its console and QMP on Unix sockets; returns once the QMP socket exists.</summary>
    internal static async Task<(Process Ferry, string QmpSocket)> StartWithQmp(string memory, params string[] options)
    {
        var socketPath = Path.Combine(Path.GetTempPath(), $"ferry-cli-{Guid.NewGuid():N}.sock");
        var psi = new ProcessStartInfo("dotnet", [FerryDll, "run", "--memory", memory, "--console", $"unix:{socketPath}.console", "--qmp", $"unix:{socketPath}", .. options])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        var ferry = Process.Start(psi)!;
        var deadline = DateTime.UtcNow.AddSeconds(60);
        while (!File.Exists(socketPath) && DateTime.UtcNow < deadline && !ferry.HasExited)
            await Task.Delay(50);
        return (ferry, socketPath);
    }

    private static void AssertOneLineError(int code, string stderr, string expected)
    {
        Assert.NotEqual(0, code);
        var lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.True(lines.Length == 1, $"expected one line, got: {stderr}");
        Assert.StartsWith("ferry: ", lines[0], StringComparison.Ordinal);
        Assert.Contains(expected, lines[0], StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--memory", "513M", "513 MiB is not a multiple of 2 MiB")]
    [InlineData("--memory", "126G", "more than this host can back")]
    [InlineData("--memory", "100000G", "above Ferry's maximum")]
    [InlineData("--memory", "lots", "'lots' is not a size")]
    [InlineData("--cpus", "zero", "--cpus 'zero'")]
    [InlineData("--bogus", "1", "unknown option '--bogus'")]
    [InlineData("--console", "tcp:1", "--console 'tcp:1'")]
    public void Bad_input_gets_a_one_line_error_naming_the_value(string option, string value, string expected)
    {
        var (code, _, stderr) = Ferry("", null, "run", option, value);
        AssertOneLineError(code, stderr, expected);
    }

    [Fact]
    public void A_missing_guest_image_is_named()
    {
        var (code, _, stderr) = Ferry("", null, "run", "--guest", "/nonexistent/guest.elf");
        AssertOneLineError(code, stderr, "/nonexistent/guest.elf: no such file");
    }

    [Fact]
    public void An_invalid_guest_image_is_named()
    {
        var path = Path.GetTempFileName();
        File.WriteAllText(path, "this is not an ELF file, just text");
        try
        {
            var (code, _, stderr) = Ferry("", null, "run", "--guest", path);
            AssertOneLineError(code, stderr, "not an ELF file");
        }
        finally
        {
            File.Delete(path);
        }
    }

    [Fact]
    public void A_missing_KVM_device_is_named()
    {
        var (code, _, stderr) = Ferry("", new Dictionary<string, string> { ["FERRY_KVM_DEVICE"] = "/nonexistent/kvm" }, "run");
        AssertOneLineError(code, stderr, "/nonexistent/kvm does not exist");
        (code, _, stderr) = Ferry("", new Dictionary<string, string> { ["FERRY_KVM_DEVICE"] = "/dev/null" }, "run");
        AssertOneLineError(code, stderr, "/dev/null is not a KVM device");
    }

    [KvmFact] // without KVM the machine fails before the socket is tried
    public void An_unusable_QMP_socket_path_is_named()
    {
        var (code, _, stderr) = Ferry("", null, "run", "--memory", "64M", "--qmp", "unix:/nonexistent/dir/q.sock");
        AssertOneLineError(code, stderr, "--qmp unix:/nonexistent/dir/q.sock");
    }

    [Fact]
    public void An_unknown_command_is_named()
    {
        var (code, _, stderr) = Ferry("", null, "fly");
        AssertOneLineError(code, stderr, "unknown command 'fly'");
    }

    [KvmFact]
    public void Run_on_stdio_answers_commands_and_exits_zero_on_poweroff()
    {
        var (code, stdout, stderr) = Ferry("stats\npoweroff\n", null, "run", "--memory", "64M");
        Assert.Equal(0, code);
        Assert.Contains("\"event\":\"ready\"", stdout, StringComparison.Ordinal);
        Assert.Contains("\"cmd\":\"stats\"", stdout, StringComparison.Ordinal);
        Assert.Contains("guest powered off", stderr, StringComparison.Ordinal);
    }

    [KvmFact]
    public async Task The_QMP_socket_answers_status_stop_cont_and_quit()
    {
        var (started, socketPath) = await StartWithQmp("64M");
        using var ferry = started;
        try
        {
            using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath));
            using var stream = new NetworkStream(socket);
            using var reader = new StreamReader(stream, Encoding.UTF8);
            using var writer = new StreamWriter(stream, new UTF8Encoding(false)) { AutoFlush = true };
            async Task<string> Send(string json)
            {
                await writer.WriteAsync(json + "\n");
                string line;
                do
                    line = (await reader.ReadLineAsync())!;
                while (line.Contains("\"event\"", StringComparison.Ordinal));
                return line;
            }
            Assert.Contains("\"QMP\"", await reader.ReadLineAsync(), StringComparison.Ordinal);
            Assert.Contains("\"return\"", await Send("{\"execute\":\"qmp_capabilities\"}"), StringComparison.Ordinal);
            Assert.Contains("\"status\":\"running\"", await Send("{\"execute\":\"query-status\"}"), StringComparison.Ordinal);
            Assert.Contains("\"return\"", await Send("{\"execute\":\"stop\"}"), StringComparison.Ordinal);
            Assert.Contains("\"status\":\"paused\"", await Send("{\"execute\":\"query-status\"}"), StringComparison.Ordinal);
            Assert.Contains("\"return\"", await Send("{\"execute\":\"cont\"}"), StringComparison.Ordinal);
            Assert.Contains("\"status\":\"running\"", await Send("{\"execute\":\"query-status\"}"), StringComparison.Ordinal);
            Assert.Contains("\"return\"", await Send("{\"execute\":\"quit\"}"), StringComparison.Ordinal);
            Assert.True(ferry.WaitForExit(30_000), "ferry did not exit after quit");
            Assert.Equal(0, ferry.ExitCode);
        }
        finally
        {
            if (!ferry.HasExited)
                ferry.Kill(entireProcessTree: true);
        }
    }
}

public sealed class CliControlTests
{
    [KvmFact]
    public async Task Balloon_subcommands_print_readable_results()
    {
        var (started, socketPath) = await CliTests.StartWithQmp("256M");
        using var ferry = started;
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            string Run(params string[] args)
            {
                var (code, stdout, stderr) = CliTests.Ferry("", null, args);
                Assert.True(code == 0, $"ferry {string.Join(' ', args)} failed: {stderr}");
                return stdout;
            }
            var sock = $"unix:{socketPath}";
            // The driver needs a moment after boot; balloon-info says when it is ready.
            static string Field(string output, string name) =>
                output.Split('\n').First(l => l.StartsWith(name + ":", StringComparison.Ordinal))[(name.Length + 1)..].Trim();
            while (Field(Run("balloon-info", sock), "driver-ready") != "true")
            {
                Assert.True(DateTime.UtcNow < deadline, "the balloon driver did not become ready");
                await Task.Delay(50);
            }
            Assert.Contains("balloon target set: guest size 128 MiB", Run("balloon", sock, "128M"), StringComparison.Ordinal);
            while (Field(Run("balloon-info", sock), "guest size now") != "128.0 MiB")
            {
                Assert.True(DateTime.UtcNow < deadline, "the balloon did not reach 128 MiB");
                await Task.Delay(50);
            }
            Assert.Contains("free-memory:", Run("guest-stats", sock), StringComparison.Ordinal);
            Assert.Contains("free page hint run started, cmd_id 0x8000", Run("hint", sock, "start"), StringComparison.Ordinal);
            Assert.Contains("hinting:", Run("hint", sock, "status"), StringComparison.Ordinal);
            Run("hint", sock, "done");
            Assert.Contains("guest free pages (request 1)", Run("free-bitmap", sock), StringComparison.Ordinal);
            var (code, _, stderr) = CliTests.Ferry("", null, "balloon", sock, "lots");
            Assert.NotEqual(0, code);
            Assert.Contains("'lots' is not a size", stderr, StringComparison.Ordinal);
            Assert.Contains("VM quitting", Run("quit", sock), StringComparison.Ordinal);
            Assert.True(ferry.WaitForExit(30_000));
        }
        finally
        {
            if (!ferry.HasExited)
                ferry.Kill(entireProcessTree: true);
        }
    }
}

public sealed class CliMigrationTests
{
    private static readonly string FerryDll = typeof(Program).Assembly.Location;

    internal static int FreePort()
    {
        using var l = new System.Net.Sockets.TcpListener(System.Net.IPAddress.Loopback, 0);
        l.Start();
        return ((System.Net.IPEndPoint)l.LocalEndpoint).Port;
    }

    /// <summary>Starts `ferry run --incoming tcp:127.0.0.1:PORT`; returns once it says it is waiting.</summary>
    internal static Task<(Process Ferry, string Qmp, string Console, StringBuilder Stderr)> StartIncoming(string memory, int port) =>
        StartIncoming(memory, $"tcp:127.0.0.1:{port}");

    /// <summary>Starts `ferry run --incoming URI` (or defer); returns once it says it is waiting.</summary>
    internal static async Task<(Process Ferry, string Qmp, string Console, StringBuilder Stderr)> StartIncoming(string memory, string incoming)
    {
        var socketPath = Path.Combine(Path.GetTempPath(), $"ferry-in-{Guid.NewGuid():N}.sock");
        var psi = new ProcessStartInfo("dotnet", [FerryDll, "run", "--memory", memory, "--incoming", incoming, "--console", $"unix:{socketPath}.console", "--qmp", $"unix:{socketPath}"])
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        var ferry = Process.Start(psi)!;
        var stderr = new StringBuilder();
        // Continuations must not run on the stderr reader thread: the test body would block it.
        var waiting = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        ferry.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
                stderr.AppendLine(e.Data);
            if (e.Data?.Contains("waiting for a migration", StringComparison.Ordinal) == true || e.Data?.Contains("waiting for QMP migrate-incoming", StringComparison.Ordinal) == true)
                waiting.TrySetResult();
        };
        ferry.BeginErrorReadLine();
        await waiting.Task.WaitAsync(TimeSpan.FromSeconds(60));
        return (ferry, socketPath, socketPath + ".console", stderr);
    }

    /// <summary>Waits until the process's captured stderr contains the text (its last lines arrive after the exit).</summary>
    internal static void AssertStderrSoon(StringBuilder stderr, string text)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            lock (stderr)
            {
                if (stderr.ToString().Contains(text, StringComparison.Ordinal))
                    return;
                if (DateTime.UtcNow > deadline)
                    Assert.Fail($"stderr lacks '{text}': {stderr}");
            }
            Thread.Sleep(50);
        }
    }

    internal static async Task<string> ConsoleCommand(string consolePath, string command)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        await socket.ConnectAsync(new UnixDomainSocketEndPoint(consolePath));
        using var stream = new NetworkStream(socket);
        await stream.WriteAsync(Encoding.UTF8.GetBytes(command + "\n"));
        using var reader = new StreamReader(stream);
        using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        while (true)
        {
            var line = await reader.ReadLineAsync(timeout.Token) ?? throw new IOException("console closed");
            if (line.Contains($"\"cmd\":\"{command.Split(' ')[0]}\"", StringComparison.Ordinal))
                return line;
        }
    }

    [KvmFact]
    public async Task Ferry_migrate_moves_a_running_guest_to_an_incoming_ferry()
    {
        var port = FreePort();
        // The source exits once migrated (--exit-after-migration), as a script wants; without it it waits in postmigrate.
        var (source, sourceQmp) = await CliTests.StartWithQmp("256M", "--exit-after-migration");
        var (destination, destinationQmp, destinationConsole, destinationErr) = await StartIncoming("256M", port);
        using (source)
        using (destination)
        {
            try
            {
                await ConsoleCommand(sourceQmp + ".console", "fill 64");
                await ConsoleCommand(sourceQmp + ".console", "dirty 20 8");
                var report = Path.Combine(Path.GetTempPath(), $"ferry-report-{Guid.NewGuid():N}.json");
                var (code, stdout, stderr) = CliTests.Ferry("", null, "migrate", $"unix:{sourceQmp}", $"tcp:127.0.0.1:{port}", "--channels", "2", "--verify", "--report", report, "--quiet");
                Assert.True(code == 0, $"migrate failed: {stderr}\n{stdout}");
                Assert.Contains("status               completed", stdout, StringComparison.Ordinal);
                Assert.Contains("verified", stdout, StringComparison.Ordinal);
                Assert.Contains("skipped: untouched", stdout, StringComparison.Ordinal);
                var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(report))!;
                File.Delete(report);
                Assert.Equal("completed", json["status"]!.GetValue<string>());
                Assert.True(json["ferry"]!["passes"]!.AsArray().Count >= 2);
                Assert.Equal(2, json["ferry"]!["channels"]!.GetValue<int>());
                Assert.True(json["ferry"]!["verified-chunks"]!.GetValue<long>() > 0);
                Assert.True(json["ferry"]!["downtime-phases-ms"]!["verify"]!.GetValue<double>() > 0);
                Assert.True(source.WaitForExit(30_000), "the source did not exit after the migration");
                Assert.Equal(0, source.ExitCode);

                Assert.Contains("\"passed\":true", await ConsoleCommand(destinationConsole, "verify"), StringComparison.Ordinal);
                var (statusCode, status, _) = CliTests.Ferry("", null, "status", $"unix:{destinationQmp}");
                Assert.Equal(0, statusCode);
                Assert.Contains("running", status, StringComparison.Ordinal);
                CliTests.Ferry("", null, "quit", $"unix:{destinationQmp}");
                Assert.True(destination.WaitForExit(30_000));
                AssertStderrSoon(destinationErr, "migration loaded from 2 channel(s)");
                AssertStderrSoon(destinationErr, "memory verified:");
            }
            finally
            {
                foreach (var p in new[] { source, destination })
                {
                    if (!p.HasExited)
                        p.Kill(entireProcessTree: true);
                }
            }
        }
    }

    [KvmFact]
    public async Task A_destination_with_less_memory_refuses_exits_5_and_the_source_keeps_running()
    {
        var port = FreePort();
        var (source, sourceQmp) = await CliTests.StartWithQmp("256M");
        var (destination, _, _, destinationErr) = await StartIncoming("128M", port);
        using (source)
        using (destination)
        {
            try
            {
                var (code, _, stderr) = CliTests.Ferry("", null, "migrate", $"unix:{sourceQmp}", $"tcp:127.0.0.1:{port}", "--quiet");
                Assert.Equal(1, code);
                Assert.Contains("RAM block 'ram-low'", stderr, StringComparison.Ordinal);
                Assert.True(destination.WaitForExit(30_000));
                Assert.Equal(5, destination.ExitCode);
                AssertStderrSoon(destinationErr, "incoming migration failed: bad migration stream: RAM block 'ram-low'");
                var (_, status, _) = CliTests.Ferry("", null, "status", $"unix:{sourceQmp}");
                Assert.Contains("running", status, StringComparison.Ordinal);
                Assert.Contains("\"passed\":true", await ConsoleCommand(sourceQmp + ".console", "verify"), StringComparison.Ordinal);
            }
            finally
            {
                foreach (var p in new[] { source, destination })
                {
                    if (!p.HasExited)
                        p.Kill(entireProcessTree: true);
                }
            }
        }
    }

    [Fact]
    public void Bad_migration_arguments_are_one_line_errors_naming_the_value()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "run", "--incoming", "udp:1.2.3.4:5");
        Assert.Equal(2, code);
        Assert.Contains("'udp:1.2.3.4:5' is not supported", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "run", "--incoming", "tcp:host:99999");
        Assert.Equal(2, code);
        Assert.Contains("port '99999' is not 0..65535", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock", "tcp:h:1", "--channels", "zero");
        Assert.Equal(2, code);
        Assert.Contains("--channels 'zero'", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock");
        Assert.Equal(2, code);
        Assert.Contains("usage: ferry migrate", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "run", "--lazy");
        Assert.Equal(2, code);
        Assert.Contains("--lazy only applies to --restore FILE", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "run", "--restore", "/nonexistent.snap", "--lazy=copy");
        Assert.Equal(2, code);
        Assert.Contains("--lazy 'copy' is not uffd or map", stderr, StringComparison.Ordinal);
    }

    [Fact]
    public void Tls_options_with_unusable_credentials_are_refused_before_a_machine_exists()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "run", "--tls-creds", "/nonexistent/tls", "--incoming", "tcp:127.0.0.1:0");
        Assert.Equal(2, code);
        Assert.Contains("--tls-creds: tls-creds '/nonexistent/tls' is not a directory", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "run", "--tls-authz", "CN=x");
        Assert.Equal(2, code);
        Assert.Contains("--tls-authz only applies with --tls-creds DIR", stderr, StringComparison.Ordinal);
        var (helpCode, help, _) = CliTests.Ferry("", null, "migrate", "--help");
        Assert.Equal(0, helpCode);
        Assert.Contains("--tls-creds", help, StringComparison.Ordinal);
        Assert.Contains("--tls-hostname", help, StringComparison.Ordinal);
    }

    [Fact]
    public void A_bad_socket_mode_or_a_socket_path_that_is_not_a_socket_is_refused_naming_it()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "run", "--socket-mode", "0800");
        Assert.Equal(2, code);
        Assert.Contains("--socket-mode '0800' is not an octal file mode", stderr, StringComparison.Ordinal);
        var file = Path.Combine(Path.GetTempPath(), $"ferry-not-a-socket-{Guid.NewGuid():N}");
        File.WriteAllText(file, "keep me");
        try
        {
            (code, _, stderr) = CliTests.Ferry("", null, "run", "--console", $"unix:{file}");
            Assert.Equal(2, code);
            Assert.Contains($"--console unix:{file}: cannot listen on {file}: it exists and is not a socket", stderr, StringComparison.Ordinal);
            Assert.Equal("keep me", File.ReadAllText(file));
        }
        finally
        {
            File.Delete(file);
        }
    }
}

public sealed class CliSnapshotTests : IDisposable
{
    private static readonly string FerryDll = typeof(Program).Assembly.Location;
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-cli-snap-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    [KvmFact]
    public async Task Save_inspect_and_restore_from_the_command_line()
    {
        var (started, qmp) = await CliTests.StartWithQmp("256M");
        using var source = started;
        var file = Path.Combine(_directory, "vm.snap");
        try
        {
            var (code, stdout, stderr) = CliTests.Ferry("", null, "snapshot", "save", $"unix:{qmp}", file, "--quiet");
            Assert.True(code == 0, $"save failed: {stderr}\n{stdout}");
            Assert.Contains("snapshot written:", stdout, StringComparison.Ordinal);
            Assert.Contains("running", CliTests.Ferry("", null, "status", $"unix:{qmp}").Stdout, StringComparison.Ordinal);
            CliTests.Ferry("", null, "quit", $"unix:{qmp}");
            Assert.True(source.WaitForExit(30_000));
        }
        finally
        {
            if (!source.HasExited)
                source.Kill(entireProcessTree: true);
        }

        var (inspectCode, json, inspectErr) = CliTests.Ferry("", null, "snapshot", "inspect", file, "--json");
        Assert.True(inspectCode == 0, inspectErr);
        var inspection = System.Text.Json.Nodes.JsonNode.Parse(json)!;
        Assert.Equal(2, inspection["version"]!.GetValue<int>());
        Assert.Equal("ram-low", inspection["blocks"]![0]!["name"]!.GetValue<string>());
        Assert.True(inspection["state"]!.AsArray().Count >= 3);
        Assert.True(inspection["allocated-bytes"]!.GetValue<long>() < 64L << 20, "an idle 256 MiB guest's snapshot should be small on disk");
        Assert.Null(inspection["page-checks"]);
        (inspectCode, json, inspectErr) = CliTests.Ferry("", null, "snapshot", "inspect", file, "--json", "--verify");
        Assert.True(inspectCode == 0, inspectErr);
        var pageChecks = System.Text.Json.Nodes.JsonNode.Parse(json)!["page-checks"]!;
        Assert.True(pageChecks["passed"]!.GetValue<bool>());
        Assert.True(pageChecks["pages-checked"]!.GetValue<long>() > 0);

        foreach (var lazy in new[] { null, "--lazy", "--lazy=map" })
            await RestoreAndQuit(file, lazy);
    }

    /// <summary>`ferry run --restore FILE [--lazy[=map]]` runs the guest (QMP says running) and says how it restored.</summary>
    private async Task RestoreAndQuit(string file, string? lazy)
    {
        var socket = Path.Combine(_directory, lazy is null ? "eager.sock" : lazy.Length > 6 ? "map.sock" : "lazy.sock");
        string[] arguments = [FerryDll, "run", "--memory", "256M", "--restore", file, "--qmp", $"unix:{socket}", "--console", $"unix:{socket}.console"];
        var psi = new ProcessStartInfo("dotnet", lazy is not null ? [.. arguments, lazy] : arguments)
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
        };
        using var restored = Process.Start(psi)!;
        try
        {
            var deadline = DateTime.UtcNow.AddSeconds(60);
            while (!File.Exists(socket) && DateTime.UtcNow < deadline && !restored.HasExited)
                await Task.Delay(50);
            var status = "";
            while (DateTime.UtcNow < deadline && !status.Contains("running", StringComparison.Ordinal) && !restored.HasExited)
            {
                status = CliTests.Ferry("", null, "status", $"unix:{socket}").Stdout;
                await Task.Delay(50);
            }
            Assert.Contains("running", status, StringComparison.Ordinal);
            CliTests.Ferry("", null, "quit", $"unix:{socket}");
            Assert.True(restored.WaitForExit(30_000));
            var said = restored.StandardError.ReadToEnd();
            Assert.Contains(lazy is not null ? $"restored {file} lazily" : $"restored {file} in", said, StringComparison.Ordinal);
            Assert.Contains(lazy switch { null => "MiB read", "--lazy" => "owed by the file", _ => "mapped from the file" }, said, StringComparison.Ordinal);
        }
        finally
        {
            if (!restored.HasExited)
                restored.Kill(entireProcessTree: true);
        }
    }

    /// <summary>No KVM needed: a file made by the writer, with one page damaged.</summary>
    [Fact]
    public void Inspect_verify_names_a_damaged_page_and_fails()
    {
        var file = Path.Combine(_directory, "damaged.snap");
        using (var writer = Ferry.Migration.Snapshot.SnapshotWriter.Create(file, [new Ferry.Migration.Stream.BlockDescriptor("ram-low", 4 << 20)]))
        {
            writer.WritePages(0, 10, Enumerable.Repeat((byte)7, 3 * 4096).ToArray());
            writer.Finish([]);
        }
        var (code, stdout, stderr) = CliTests.Ferry("", null, "snapshot", "inspect", file, "--verify");
        Assert.True(code == 0, stderr);
        Assert.Contains("pages: 3 checked", stdout, StringComparison.Ordinal);

        using (var handle = File.OpenHandle(file, FileMode.Open, FileAccess.ReadWrite))
            RandomAccess.Write(handle, new byte[] { 8 }, (1 << 20) + 11 * 4096 + 100); // page 11 (its page area starts at 1 MiB)
        (code, stdout, _) = CliTests.Ferry("", null, "snapshot", "inspect", file);
        Assert.Equal(0, code); // without --verify no page is read
        (code, stdout, _) = CliTests.Ferry("", null, "snapshot", "inspect", file, "--verify");
        Assert.Equal(1, code);
        Assert.Contains("bad page: block 'ram-low' page 11", stdout, StringComparison.Ordinal);
        (code, stdout, _) = CliTests.Ferry("", null, "snapshot", "inspect", file, "--verify", "--json");
        Assert.Equal(1, code);
        var checks = System.Text.Json.Nodes.JsonNode.Parse(stdout)!["page-checks"]!;
        Assert.Equal(1, checks["bad-pages"]!.GetValue<long>());
        Assert.Equal(11, checks["first-bad-pages"]![0]!["page"]!.GetValue<long>());
    }

    [KvmFact]
    public void A_damaged_snapshot_is_refused_by_restore_and_inspect()
    {
        var file = Path.Combine(_directory, "junk.snap");
        File.WriteAllBytes(file, new byte[8192]);
        var (code, _, stderr) = CliTests.Ferry("", null, "run", "--memory", "256M", "--restore", file);
        Assert.Equal(5, code);
        Assert.Contains($"--restore {file}", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "snapshot", "inspect", file);
        Assert.Equal(1, code);
        Assert.StartsWith("ferry: snapshot inspect:", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("   at ", stderr, StringComparison.Ordinal);
    }
}
