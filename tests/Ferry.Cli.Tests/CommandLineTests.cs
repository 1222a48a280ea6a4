using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>
/// The command tree (System.CommandLine): help and version, suggestions, one exit code per kind of mistake, sizes,
/// and output paths checked before any work. No KVM needed.
/// </summary>
public sealed class CommandLineTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("ferry-cli-args-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private static void AssertUsageError(string expected, params string[] args)
    {
        var (code, stdout, stderr) = CliTests.Ferry("", null, args);
        Assert.True(code == (int)ExitCode.Usage, $"exit {code}: {stderr}");
        var line = Assert.Single(stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries));
        Assert.StartsWith("ferry: ", line, StringComparison.Ordinal);
        Assert.DoesNotContain("ferry: ferry", line, StringComparison.Ordinal);
        Assert.Contains(expected, line, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", stderr, StringComparison.Ordinal);
        Assert.Equal("", stdout);
    }

    [Theory]
    [InlineData("run")]
    [InlineData("migrate")]
    [InlineData("snapshot save")]
    [InlineData("balloon")]
    [InlineData("hint")]
    public void Every_command_has_its_own_help(string command)
    {
        var (code, stdout, stderr) = CliTests.Ferry("", null, [.. command.Split(' '), "--help"]);
        Assert.True(code == 0, stderr);
        Assert.Contains($"ferry {command}", stdout, StringComparison.Ordinal);
        Assert.Contains("--log-level", stdout, StringComparison.Ordinal);
    }

    [Fact]
    public void Help_names_the_commands_and_the_exit_codes()
    {
        var (code, stdout, _) = CliTests.Ferry("", null, "help");
        Assert.Equal(0, code);
        foreach (var command in new[] { "run", "demo", "migrate", "snapshot", "balloon", "qmp" })
            Assert.Contains(command, stdout, StringComparison.Ordinal);
        Assert.Contains("2 usage error", stdout, StringComparison.Ordinal);
        (code, stdout, _) = CliTests.Ferry("", null, "help", "migrate");
        Assert.Equal(0, code);
        Assert.Contains("--max-bandwidth", stdout, StringComparison.Ordinal);
        (code, _, _) = CliTests.Ferry("", null);
        Assert.Equal((int)ExitCode.Usage, code);
    }

    [Fact]
    public void Version_prints_one_line()
    {
        var (code, stdout, _) = CliTests.Ferry("", null, "--version");
        Assert.Equal(0, code);
        Assert.Single(stdout.Split('\n', StringSplitOptions.RemoveEmptyEntries));
    }

    [Fact]
    public void Misspelt_commands_and_options_get_a_suggestion()
    {
        AssertUsageError("unknown command 'statsu' (did you mean 'status'?)", "statsu");
        AssertUsageError("unknown option '--memroy' (did you mean '--memory'?)", "run", "--memroy", "1G");
    }

    [Theory]
    [InlineData("--cpus 'zero' is not a positive whole number", "run", "--cpus", "zero")]
    [InlineData("--memory 'lots' is not a size", "run", "--memory", "lots")]
    [InlineData("memory 513 MiB is not a multiple of 2 MiB", "run", "--memory", "513M")]
    [InlineData("memory 4 MiB is below the minimum", "run", "--memory", "4")]
    [InlineData("--max-bandwidth 'fast' is not a size", "migrate", "unix:/nonexistent.sock", "tcp:h:1", "--max-bandwidth", "fast")]
    [InlineData("'lots' is not a size", "balloon", "unix:/nonexistent.sock", "lots")]
    [InlineData("'/x.sock' is not the QMP socket", "status", "/x.sock")]
    [InlineData("'fly' is not start, stop, done or status", "hint", "unix:/nonexistent.sock", "fly")]
    [InlineData("--log-level 'loud' is not one of", "run", "--log-level", "loud")]
    [InlineData("usage: ferry snapshot save unix:SOCK FILE", "snapshot", "save", "unix:/nonexistent.sock")]
    [InlineData("--restore and --incoming cannot be combined", "run", "--restore", "f", "--incoming", "tcp:h:1")]
    [InlineData("--restore and --incoming cannot be combined", "run", "--restore", "f", "--incoming", "defer")]
    [InlineData("--incoming defer needs --qmp unix:PATH (migrate-incoming starts the migration)", "run", "--incoming", "defer")]
    [InlineData("--incoming file:/x.img: a file needs the mapped-ram capability; use --incoming defer, then migrate-set-capabilities mapped-ram and migrate-incoming (or --restore /x.img)", "run", "--incoming", "file:/x.img")]
    [InlineData("--incoming: migration URI 'exec:' has no command (use exec:COMMAND)", "run", "--incoming", "exec:")]
    [InlineData("migration URI 'file:' has an empty path (use file:PATH)", "migrate", "unix:/nonexistent.sock", "file:", "--mapped-ram")]
    public void The_same_kind_of_mistake_is_always_exit_2(string expected, params string[] args) => AssertUsageError(expected, args);

    [Fact]
    public void A_bad_report_path_fails_at_once_before_connecting()
    {
        // The socket does not exist either: the path is checked first, so the error is about the path.
        AssertUsageError("--report '/nonexistent/x.json': directory /nonexistent does not exist",
            "migrate", "unix:/nonexistent.sock", "tcp:h:1", "--report", "/nonexistent/x.json");
        AssertUsageError($"--report '{_directory}' is a directory", "migrate", "unix:/nonexistent.sock", "tcp:h:1", "--report", _directory);
        AssertUsageError("--report '/nonexistent/x.json'", "snapshot", "save", "unix:/nonexistent.sock", Path.Combine(_directory, "vm.snap"), "--report", "/nonexistent/x.json");
    }

    [Fact]
    public void A_bad_snapshot_path_fails_at_once_before_connecting()
    {
        AssertUsageError($"snapshot file '{_directory}' is a directory", "snapshot", "save", "unix:/nonexistent.sock", _directory);
        AssertUsageError("directory /nonexistent does not exist", "snapshot", "save", "unix:/nonexistent.sock", "/nonexistent/vm.snap");
        Assert.Empty(Directory.GetFileSystemEntries(_directory));
    }

    [Fact]
    public void A_good_output_path_gets_as_far_as_connecting()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "snapshot", "save", "unix:/nonexistent.sock", Path.Combine(_directory, "vm.snap"), "--report", Path.Combine(_directory, "r.json"));
        Assert.Equal((int)ExitCode.Failure, code);
        Assert.Contains("cannot connect to the QMP socket /nonexistent.sock", stderr, StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(_directory));
    }

    [Fact]
    public void Usage_lines_come_from_the_command_tree()
    {
        var root = Program.BuildCommand();
        var migrate = root.Subcommands.Single(c => c.Name == "migrate");
        Assert.Equal("ferry migrate unix:SOCK URI [--max-bandwidth SIZE] [--downtime-limit MS] [--channels N] [--postcopy-after-passes N] [--tls-creds DIR] [--tls-hostname NAME] [--auto-converge] [--no-hint] [--no-balloon-skip] [--verify] [--mapped-ram] [--postcopy] [--report FILE] [--quiet]",
            Program.UsageLine(migrate, "migrate"));
    }

    [Theory]
    [InlineData("--memory", "--memroy", " (did you mean '--memory'?)")]
    [InlineData("status", "stauts", " (did you mean 'status'?)")]
    [InlineData("migrate", "xyzzy", "")]
    public void Suggestions_are_close_names_only(string candidate, string token, string expected) =>
        Assert.Equal(expected, Program.Suggestion(token, [candidate, "balloon"]));
}

/// <summary>The one exit-code table: values are fixed (scripts depend on them) and migration outcomes map onto it.</summary>
public sealed class ExitCodeTests
{
    [Fact]
    public void The_table_keeps_its_values()
    {
        Assert.Equal(0, (int)ExitCode.Ok);
        Assert.Equal(1, (int)ExitCode.Failure);
        Assert.Equal(2, (int)ExitCode.Usage);
        Assert.Equal(3, (int)ExitCode.GuestPanic);
        Assert.Equal(4, (int)ExitCode.VcpuFault);
        Assert.Equal(5, (int)ExitCode.LoadFailed);
        Assert.Equal(6, (int)ExitCode.Cancelled);
    }

    [Theory]
    [InlineData("completed", null, ExitCode.Ok)]
    [InlineData("cancelled", "cancelled", ExitCode.Cancelled)]
    [InlineData("failed", "destination-refused", ExitCode.Failure)]
    [InlineData("failed", "channel-failed", ExitCode.Failure)]
    [InlineData("failed", null, ExitCode.Failure)]
    public void Migration_outcomes_map_onto_the_table(string status, string? kind, ExitCode expected) =>
        Assert.Equal(expected, ExitCodes.ForMigration(status, kind));

    [Theory]
    [InlineData(Ferry.Machine.ShutdownCause.GuestShutdown, ExitCode.Ok)]
    [InlineData(Ferry.Machine.ShutdownCause.HostQmpQuit, ExitCode.Ok)]
    [InlineData(Ferry.Machine.ShutdownCause.HostSignal, ExitCode.Ok)]
    [InlineData(Ferry.Machine.ShutdownCause.GuestPanic, ExitCode.GuestPanic)]
    [InlineData(Ferry.Machine.ShutdownCause.HostError, ExitCode.VcpuFault)]
    public void Machine_exits_map_onto_the_table(Ferry.Machine.ShutdownCause kind, ExitCode expected) =>
        Assert.Equal(expected, ExitCodes.For(new Ferry.Machine.MachineExit(kind, "", kind == Ferry.Machine.ShutdownCause.HostError ? Ferry.Machine.HostFault.Vcpu : Ferry.Machine.HostFault.None)));

    [Fact]
    public void Memory_a_lazy_restore_could_not_bring_in_is_a_load_failure() =>
        Assert.Equal(ExitCode.LoadFailed, ExitCodes.For(new Ferry.Machine.MachineExit(Ferry.Machine.ShutdownCause.HostError, "", Ferry.Machine.HostFault.Memory)));
}
