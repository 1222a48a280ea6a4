using System.Diagnostics;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>
/// Two real `ferry run` processes and QEMU's migration flow: a destination started with `--incoming defer` and
/// driven over QMP (inmigrate, settings first, migrate-incoming), `ferry migrate` over unix:, exec: and file:, and
/// the source left in postmigrate until quit. Needs KVM.
/// </summary>
public sealed class CliTransportTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ferry-cli-transport-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static void KillAll(params Process[] processes)
    {
        foreach (var p in processes)
        {
            if (!p.HasExited)
                p.Kill(entireProcessTree: true);
        }
    }

    private static string Status(string qmp) => QmpStatus(qmp)["status"]!.GetValue<string>();

    private static JsonObject QmpStatus(string qmp)
    {
        using var client = QmpClient.Connect(qmp);
        return (JsonObject)client.Execute("query-status")!;
    }

    /// <summary>Migrates with `ferry migrate`, then checks the QEMU-like ending: the source in postmigrate, the guest verified on the destination, quit ends both.</summary>
    private static async Task MigrateAndCheck(Process source, string sourceQmp, Process destination, string destinationQmp, string destinationConsole, string uri, params string[] options)
    {
        await CliMigrationTests.ConsoleCommand(sourceQmp + ".console", "fill 32");
        var (code, stdout, stderr) = CliTests.Ferry("", null, ["migrate", $"unix:{sourceQmp}", uri, "--quiet", .. options]);
        Assert.True(code == 0, $"migrate failed: {stderr}\n{stdout}");
        Assert.Equal("postmigrate", Status(sourceQmp));
        Assert.False(source.HasExited, "the source exited without --exit-after-migration");
        var deadline = DateTime.UtcNow.AddSeconds(30);
        while (Status(destinationQmp) != "running" && DateTime.UtcNow < deadline)
            await Task.Delay(50);
        Assert.Contains("\"passed\":true", await CliMigrationTests.ConsoleCommand(destinationConsole, "verify"), StringComparison.Ordinal);
        CliTests.Ferry("", null, "quit", $"unix:{sourceQmp}");
        Assert.True(source.WaitForExit(30_000), "the source did not exit on quit");
        Assert.Equal(0, source.ExitCode);
        CliTests.Ferry("", null, "quit", $"unix:{destinationQmp}");
        Assert.True(destination.WaitForExit(30_000));
    }

    [KvmFact]
    public async Task Defer_then_migrate_incoming_over_unix_and_the_source_waits_in_postmigrate()
    {
        var (destination, destinationQmp, destinationConsole, destinationErr) = await CliMigrationTests.StartIncoming("256M", "defer");
        var (source, sourceQmp) = await CliTests.StartWithQmp("256M");
        using (destination)
        using (source)
        {
            try
            {
                var uri = $"unix:{Path.Combine(_dir, "m.sock")}";
                using (var client = QmpClient.Connect(destinationQmp))
                {
                    Assert.Equal("inmigrate", client.Execute("query-status")!["status"]!.GetValue<string>());
                    client.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = "events", ["state"] = true }) });
                    client.Execute("migrate-set-parameters", new JsonObject { ["ferry-channel-timeout-ms"] = 20_000 });
                    client.Execute("migrate-incoming", new JsonObject { ["uri"] = uri });
                    Assert.Equal("setup", client.Execute("query-migrate")!["status"]!.GetValue<string>());
                }
                await MigrateAndCheck(source, sourceQmp, destination, destinationQmp, destinationConsole, uri, "--channels", "2");
                CliMigrationTests.AssertStderrSoon(destinationErr, "migration loaded from 2 channel(s)");
            }
            finally
            {
                KillAll(source, destination);
            }
        }
    }

    [KvmFact]
    public async Task Exec_commands_carry_the_migration_between_two_processes()
    {
        var toDestination = Path.Combine(_dir, "to-destination");
        var toSource = Path.Combine(_dir, "to-source");
        foreach (var fifo in new[] { toDestination, toSource })
        {
            using var mkfifo = Process.Start("mkfifo", [fifo]);
            mkfifo.WaitForExit();
        }
        var (destination, destinationQmp, destinationConsole, _) = await CliMigrationTests.StartIncoming("256M", $"exec:exec 3<&0; cat <&3 > '{toSource}' & exec cat < '{toDestination}'");
        var (source, sourceQmp) = await CliTests.StartWithQmp("256M");
        using (destination)
        using (source)
        {
            try
            {
                await MigrateAndCheck(source, sourceQmp, destination, destinationQmp, destinationConsole,
                    $"exec:exec 3<&0; cat <&3 > '{toDestination}' & exec cat < '{toSource}'", "--channels", "1");
            }
            finally
            {
                KillAll(source, destination);
            }
        }
    }

    [KvmFact]
    public async Task Migrate_to_a_file_with_mapped_ram_and_migrate_incoming_from_it()
    {
        var file = Path.Combine(_dir, "vm.img");
        var (destination, destinationQmp, destinationConsole, _) = await CliMigrationTests.StartIncoming("256M", "defer");
        var (source, sourceQmp) = await CliTests.StartWithQmp("256M");
        using (destination)
        using (source)
        {
            try
            {
                await CliMigrationTests.ConsoleCommand(sourceQmp + ".console", "fill 32");
                var (code, stdout, stderr) = CliTests.Ferry("", null, "migrate", $"unix:{sourceQmp}", $"file:{file}", "--mapped-ram", "--quiet");
                Assert.True(code == 0, $"migrate failed: {stderr}\n{stdout}");
                Assert.Equal("postmigrate", Status(sourceQmp));
                using (var client = QmpClient.Connect(destinationQmp))
                {
                    client.Execute("migrate-set-capabilities", new JsonObject { ["capabilities"] = new JsonArray(new JsonObject { ["capability"] = "mapped-ram", ["state"] = true }) });
                    client.Execute("migrate-incoming", new JsonObject { ["uri"] = $"file:{file}" });
                }
                var deadline = DateTime.UtcNow.AddSeconds(30);
                while (Status(destinationQmp) != "running" && DateTime.UtcNow < deadline)
                    await Task.Delay(50);
                Assert.Contains("\"passed\":true", await CliMigrationTests.ConsoleCommand(destinationConsole, "verify"), StringComparison.Ordinal);
                CliTests.Ferry("", null, "quit", $"unix:{sourceQmp}");
                CliTests.Ferry("", null, "quit", $"unix:{destinationQmp}");
                Assert.True(source.WaitForExit(30_000));
                Assert.True(destination.WaitForExit(30_000));
            }
            finally
            {
                KillAll(source, destination);
            }
        }
    }
}
