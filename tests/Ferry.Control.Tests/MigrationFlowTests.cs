using System.Text.Json.Nodes;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Tests.Synthetic;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Control.Tests;

/// <summary>
/// QEMU's migration flow over QMP between two servers in one process, without KVM (synthetic machines): a
/// destination waiting in inmigrate (`--incoming defer`), settings made on it first, migrate-incoming, MIGRATION
/// events on both sides only with the events capability, the source in postmigrate afterwards; every transport a
/// URI names (unix:, exec:, file: with mapped-ram); QEMU's refusals.
/// </summary>
public sealed class MigrationFlowTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("ferry-flow-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static JsonObject Uri(string uri) => new() { ["uri"] = uri };

    private static void WaitFor(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"not within 30 s: {what}");
            Thread.Sleep(20);
        }
    }

    [Fact]
    public void Defer_settings_then_migrate_incoming_over_unix_with_events_on_both_sides_and_the_source_in_postmigrate()
    {
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));
        var uri = $"unix:{Path.Combine(_dir, "migrate.sock")}";

        Assert.Equal("inmigrate", destination.Status);
        Assert.Empty((JsonObject)destination.Client.Execute("query-migrate")!);
        // No guest to run yet: cont waits for it (QEMU's autostart), stop cannot be honoured.
        destination.Client.Execute("cont");
        Assert.Equal("inmigrate", destination.Status);
        Assert.StartsWith("Guest is waiting for an incoming migration", destination.Refusal("stop", []), StringComparison.Ordinal);
        // QEMU's flow: parameters and capabilities set on the destination before migrate-incoming.
        destination.SetCapability("events", true);
        destination.Client.Execute("migrate-set-parameters", new JsonObject { ["ferry-channel-timeout-ms"] = 5000 });
        destination.Client.Execute("migrate-incoming", Uri(uri));
        Assert.Equal("setup", destination.Client.Execute("query-migrate")!["status"]!.GetValue<string>());
        Assert.Equal("The incoming migration has already been started", destination.Refusal("migrate-incoming", Uri(uri)));
        Assert.Equal("inmigrate", destination.Status);

        source.SetCapability("events", true);
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 3 });
        source.Client.Execute("migrate", Uri(uri));
        var final = source.WaitForFinalStatus();
        var arrived = destination.WaitForFinalStatus();

        Assert.Equal("completed", final["status"]!.GetValue<string>());
        Assert.Equal("completed", arrived["status"]!.GetValue<string>());
        Assert.Equal(3, arrived["ferry"]!["channels"]!.GetValue<int>());
        Assert.Equal(uri, arrived["ferry"]!["incoming"]!.GetValue<string>());
        Assert.Equal("running", destination.Status);
        WaitFor(() => source.Status == "postmigrate", "the source in postmigrate");
        Assert.Null(source.Machine.EndedWith);
        Assert.Equal("VM status: paused (postmigrate)\r\n", source.Client.Execute("human-monitor-command", new JsonObject { ["command-line"] = "info status" })!.GetValue<string>());
        SyntheticMachine.AssertSameMemory(source.Machine, destination.Machine);
        // Each status change once, in order, on each side.
        destination.SettleEvents(3);
        source.SettleEvents(4);
        Assert.Equal(["setup", "active", "completed"], destination.MigrationEvents());
        Assert.Equal(["setup", "active", "device", "completed"], source.MigrationEvents());
        // The source can still be asked after it completed, and quits when told (QEMU's postmigrate).
        Assert.Equal("completed", source.Client.Execute("query-migrate")!["status"]!.GetValue<string>());
        source.Client.Execute("quit");
        WaitFor(() => source.Machine.EndedWith == ShutdownCause.HostQmpQuit, "quit to end the source");
    }

    [Fact]
    public void Postcopy_through_migrate_incoming_the_destination_reports_postcopy_active_then_its_postcopy_figures()
    {
        using var source = new MigrationSide(SyntheticMachine.Source());
        var destinationMachine = SyntheticMachine.DestinationFor(source.Machine);
        var memory = new SyntheticPostcopyMemory(destinationMachine.Target!.Blocks, 1);
        destinationMachine.Target.Postcopy = memory;
        using var destination = new MigrationSide(destinationMachine);
        var uri = $"unix:{Path.Combine(_dir, "postcopy.sock")}";

        destination.SetCapability("events", true);
        destination.Client.Execute("migrate-incoming", Uri(uri));
        source.SetCapability("events", true);
        source.SetCapability("postcopy-ram", true);
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 1 });
        Assert.StartsWith("Postcopy requires multi-channel URIs (e.g. tcp or unix): exec:cat", source.Refusal("migrate", Uri("exec:cat")), StringComparison.Ordinal);
        source.SetCapability("ferry-verify", true);
        Assert.StartsWith("ferry-verify is incompatible with postcopy", source.Refusal("migrate", Uri(uri)), StringComparison.Ordinal);
        source.SetCapability("ferry-verify", false);
        // Slow enough that pass 1 is still running when postcopy is asked for: the rest of it is owed.
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["max-bandwidth"] = 4L << 20, ["multifd-channels"] = 2 });
        source.Client.Execute("migrate", Uri(uri));
        source.Client.Execute("migrate-start-postcopy");
        var arrived = destination.WaitForFinalStatus();
        var final = source.WaitForFinalStatus();

        Assert.Equal("completed", final["status"]!.GetValue<string>());
        Assert.Equal("completed", arrived["status"]!.GetValue<string>());
        var postcopy = arrived["ferry"]!["postcopy"]!;
        Assert.True(postcopy["owed-pages"]!.GetValue<long>() > 0, arrived.ToJsonString());
        Assert.Equal(postcopy["owed-pages"]!.GetValue<long>(), postcopy["urgent-pages"]!.GetValue<long>() + postcopy["background-pages"]!.GetValue<long>());
        Assert.NotNull(postcopy["requests"]);
        Assert.NotNull(arrived["postcopy-blocktime"]);
        Assert.Null(arrived["ram"]);
        Assert.True(memory.Completed, "the destination's postcopy memory was not completed");
        Assert.Empty(memory.Violations);
        Assert.Equal("running", destination.Status);
        SyntheticMachine.AssertSameMemory(source.Machine, destination.Machine);
        destination.SettleEvents(4);
        Assert.Equal(["setup", "active", "postcopy-active", "completed"], destination.MigrationEvents());
        Assert.Contains("postcopy-active", source.MigrationEvents());
        Assert.Equal("Migrate recover can only be run when postcopy is paused (the incoming migration is completed)",
            destination.Refusal("migrate-recover", Uri(uri)));
    }

    [Fact]
    public void Over_exec_commands_without_the_events_capability_no_migration_event_is_sent()
    {
        var toDestination = Path.Combine(_dir, "to-destination");
        var toSource = Path.Combine(_dir, "to-source");
        foreach (var fifo in new[] { toDestination, toSource })
        {
            using var mkfifo = System.Diagnostics.Process.Start("mkfifo", [fifo]);
            mkfifo.WaitForExit();
        }
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));

        destination.Client.Execute("migrate-incoming", Uri($"exec:exec 3<&0; cat <&3 > '{toSource}' & exec cat < '{toDestination}'"));
        // exec: carries one channel: with multifd asking for more, QEMU's refusal; with one, it goes.
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 2 });
        var command = $"exec:exec 3<&0; cat <&3 > '{toDestination}' & exec cat < '{toSource}'";
        Assert.StartsWith("Migration requires multi-channel URIs (e.g. tcp): ", source.Refusal("migrate", Uri(command)), StringComparison.Ordinal);
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 1 });
        source.Client.Execute("migrate", Uri(command));

        Assert.Equal("completed", source.WaitForFinalStatus()["status"]!.GetValue<string>());
        Assert.Equal("completed", destination.WaitForFinalStatus()["status"]!.GetValue<string>());
        SyntheticMachine.AssertSameMemory(source.Machine, destination.Machine);
        WaitFor(() => source.Status == "postmigrate", "the source in postmigrate");
        source.SettleEvents(0);
        destination.SettleEvents(0);
        Assert.DoesNotContain(source.Client.Events, e => e["event"]!.GetValue<string>() is "MIGRATION" or "MIGRATION_PASS");
        Assert.DoesNotContain(destination.Client.Events, e => e["event"]!.GetValue<string>() == "MIGRATION");
    }

    [Fact]
    public void Migrate_to_a_file_with_mapped_ram_then_migrate_incoming_from_it()
    {
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));
        var path = Path.Combine(_dir, "vm.snapshot");

        Assert.Equal($"file:{path} needs the mapped-ram capability: Ferry writes a file only as the fixed-offset snapshot file", source.Refusal("migrate", Uri($"file:{path}")));
        source.SetCapability("mapped-ram", true);
        Assert.StartsWith("Migration requires seekable transport (e.g. file): ", source.Refusal("migrate", Uri("tcp:127.0.0.1:1")), StringComparison.Ordinal);
        source.SetCapability("events", true);
        source.Client.Execute("migrate", Uri($"file:{path}"));
        Assert.Equal("completed", source.WaitForFinalStatus()["status"]!.GetValue<string>());
        // A migration, not a snapshot: the guest stays paused where it was saved.
        WaitFor(() => source.Status == "postmigrate", "the source in postmigrate");
        Assert.True(File.Exists(path));
        Assert.False(File.Exists(path + ".partial"));
        source.SettleEvents(4);
        Assert.Equal("completed", source.MigrationEvents()[^1]);

        Assert.Equal($"file:{path} needs the mapped-ram capability: Ferry reads a file only as the fixed-offset snapshot file", destination.Refusal("migrate-incoming", Uri($"file:{path}")));
        destination.SetCapability("mapped-ram", true);
        destination.SetCapability("events", true);
        Assert.Equal($"file:{path}.missing: no such file", destination.Refusal("migrate-incoming", Uri($"file:{path}.missing")));
        destination.Client.Execute("migrate-incoming", Uri($"file:{path}"));
        var arrived = destination.WaitForFinalStatus();

        Assert.Equal("completed", arrived["status"]!.GetValue<string>());
        Assert.True(arrived["ferry"]!["pages-loaded"]!.GetValue<long>() > 1500);
        Assert.Equal("running", destination.Status);
        SyntheticMachine.AssertSameMemory(source.Machine, destination.Machine);
        destination.SettleEvents(3);
        Assert.Equal(["setup", "active", "completed"], destination.MigrationEvents());
    }

    [Fact]
    public void A_failed_incoming_migration_reports_failed_once_and_stays_inmigrate()
    {
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));
        var path = Path.Combine(_dir, "bad.sock");
        destination.SetCapability("events", true);
        destination.Client.Execute("migrate-incoming", new JsonObject { ["uri"] = $"unix:{path}", ["exit-on-error"] = false });

        using (var socket = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
        {
            socket.Connect(new System.Net.Sockets.UnixDomainSocketEndPoint(path));
            socket.Send("not a migration stream, not at all"u8.ToArray());
            socket.Shutdown(System.Net.Sockets.SocketShutdown.Send);
            var outcome = destination.Migration.Incoming.Finished.WaitAsync(TimeSpan.FromSeconds(30)).GetAwaiter().GetResult();
            Assert.Equal(MigrationStatus.Failed, outcome.Status);
            Assert.False(outcome.ExitOnError);
        }

        var answer = (JsonObject)destination.Client.Execute("query-migrate")!;
        Assert.Equal("failed", answer["status"]!.GetValue<string>());
        Assert.StartsWith("bad migration stream: ", answer["error-desc"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal("inmigrate", destination.Status);
        destination.SettleEvents(3);
        Assert.Equal(["setup", "active", "failed"], destination.MigrationEvents());
    }

    [Fact]
    public void Refusals_use_qemus_texts_and_name_the_bad_uri()
    {
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));

        Assert.Equal("'-incoming' was not specified on the command line", source.Refusal("migrate-incoming", Uri("tcp:127.0.0.1:0")));
        Assert.Equal("Guest is waiting for an incoming migration", destination.Refusal("migrate", Uri("tcp:127.0.0.1:1")));
        Assert.Equal("migration URI 'udp:1.2.3.4:5' is not supported ('udp:'; use tcp:HOST:PORT, unix:PATH, exec:COMMAND or file:PATH)",
            destination.Refusal("migrate-incoming", Uri("udp:1.2.3.4:5")));
        Assert.Equal("migration URI 'tcp:host:99999' port '99999' is not 0..65535", source.Refusal("migrate", Uri("tcp:host:99999")));
        Assert.StartsWith($"cannot listen on {_dir}: ", destination.Refusal("migrate-incoming", Uri($"unix:{_dir}")), StringComparison.Ordinal);
        Assert.Equal("Parameter 'channels' is unexpected", destination.Refusal("migrate-incoming", new JsonObject { ["uri"] = "tcp:127.0.0.1:0", ["channels"] = new JsonArray() }));
        // A refused start leaves migrate-incoming available; a started one cannot be started again.
        destination.Client.Execute("migrate-incoming", Uri("tcp:127.0.0.1:0"));
        Assert.Equal("The incoming migration has already been started", destination.Refusal("migrate-incoming", Uri("tcp:127.0.0.1:0")));
        Assert.Equal("inmigrate", destination.Status);
    }

    [Fact]
    public void Over_tls_set_on_both_sides_by_qmp_the_migration_completes_and_a_plain_source_is_refused_running_on()
    {
        using var certificates = new TestCertificates();
        var credentials = certificates.Directory();
        using var source = new MigrationSide(SyntheticMachine.Source());
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));
        var uri = $"unix:{Path.Combine(_dir, "tls.sock")}";
        // A unix: URI names no host: the destination's certificate name comes from tls-hostname.
        destination.Client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = credentials, ["tls-authz"] = "CN=source.example,O=Ferry" });
        destination.Client.Execute("migrate-incoming", Uri(uri));
        source.Client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = credentials, ["tls-hostname"] = "localhost" });
        source.Client.Execute("migrate", Uri(uri));
        Assert.Equal("completed", source.WaitForFinalStatus()["status"]!.GetValue<string>());
        Assert.Equal("completed", destination.WaitForFinalStatus()["status"]!.GetValue<string>());
        SyntheticMachine.AssertSameMemory(source.Machine, destination.Machine);

        // A second pair: the destination wants TLS, the source speaks plain; the source says why and runs on.
        using var plain = new MigrationSide(SyntheticMachine.Source());
        using var guarded = new MigrationSide(SyntheticMachine.DestinationFor(plain.Machine));
        var uri2 = $"unix:{Path.Combine(_dir, "tls2.sock")}";
        guarded.Client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = credentials });
        guarded.Client.Execute("migrate-incoming", new JsonObject { ["uri"] = uri2, ["exit-on-error"] = false });
        plain.Client.Execute("migrate-set-parameters", new JsonObject { ["multifd-channels"] = 1 });
        plain.Client.Execute("migrate", Uri(uri2));
        var refused = plain.WaitForFinalStatus();
        Assert.Equal("failed", refused["status"]!.GetValue<string>());
        Assert.Equal("running", plain.Status);
        var failed = guarded.WaitForFinalStatus();
        Assert.Equal("failed", failed["status"]!.GetValue<string>());
        Assert.Contains("does not speak TLS", failed["error-desc"]!.GetValue<string>(), StringComparison.Ordinal);
        Assert.Equal("tls-refused", failed["ferry-error-kind"]!.GetValue<string>());

        // Credentials that cannot be used are refused by migrate itself, naming the file, before anything connects.
        File.Delete(Path.Combine(credentials, "client-key.pem"));
        plain.Client.Execute("migrate-set-parameters", new JsonObject { ["tls-creds"] = credentials });
        Assert.Contains("client-key.pem is missing", plain.Refusal("migrate", Uri(uri2)), StringComparison.Ordinal);
    }

    [Fact]
    public void With_exit_after_migration_the_completed_source_ends_as_a_qmp_quit()
    {
        using var source = new MigrationSide(SyntheticMachine.Source(), exitAfterMigration: true);
        using var destination = new MigrationSide(SyntheticMachine.DestinationFor(source.Machine));
        var uri = $"unix:{Path.Combine(_dir, "exit.sock")}";
        destination.Client.Execute("migrate-incoming", Uri(uri));
        source.SetCapability("events", true);
        source.Client.Execute("migrate", Uri(uri));

        Assert.Equal("completed", source.WaitForFinalStatus()["status"]!.GetValue<string>());
        WaitFor(() => source.Machine.EndedWith is not null, "the source to end");
        Assert.Equal(ShutdownCause.HostQmpQuit, source.Machine.EndedWith);
        // The final event (with the figures) went out before the machine ended.
        source.SettleEvents(4);
        var last = source.Client.Events.Last(e => e["event"]!.GetValue<string>() == "MIGRATION");
        Assert.Equal("completed", last["data"]!["status"]!.GetValue<string>());
        Assert.NotNull(last["data"]!["ferry-info"]);
    }
}
