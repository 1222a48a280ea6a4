using Xunit;

namespace Ferry.Cli.Tests;

/// <summary>`ferry migrate`'s parameter options and capability flags come from the migration tables; names and messages are today's.</summary>
public sealed class MigrateOptionsTests
{
    [Fact]
    public void Usage_lists_todays_options()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock");
        Assert.Equal(2, code);
        Assert.Contains("usage: ferry migrate unix:SOCK URI [--max-bandwidth SIZE] [--downtime-limit MS] [--channels N] [--postcopy-after-passes N] [--tls-creds DIR] [--tls-hostname NAME] [--auto-converge] [--no-hint] [--no-balloon-skip] [--verify] [--mapped-ram] [--postcopy] [--report FILE] [--quiet]", stderr, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--downtime-limit", "0", 2, "--downtime-limit '0' is not a positive number of milliseconds")]
    [InlineData("--channels", "-3", 2, "--channels '-3' is not a positive whole number")]
    [InlineData("--max-bandwidth", "fast", 2, "--max-bandwidth 'fast' is not a size")]
    [InlineData("--hint-budget", "5", 2, "unknown option '--hint-budget'")]
    public void Bad_values_are_one_line_errors_naming_them(string option, string value, int exitCode, string message)
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock", "tcp:h:1", option, value);
        Assert.Equal(exitCode, code);
        Assert.Contains(message, stderr, StringComparison.Ordinal);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [Theory]
    [InlineData("udp:h:1", "migration URI 'udp:h:1' is not supported ('udp:'; use tcp:HOST:PORT, unix:PATH, exec:COMMAND or file:PATH)")]
    [InlineData("file:/tmp/x", "file:/tmp/x: a file needs --mapped-ram (the fixed-offset snapshot file, QEMU's mapped-ram)")]
    public void A_bad_target_is_refused_before_connecting(string target, string message)
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock", target);
        Assert.Equal(2, code);
        Assert.Contains(message, stderr, StringComparison.Ordinal);
        Assert.Single(stderr.Trim().Split('\n'));
    }

    [Fact]
    public void Good_options_get_as_far_as_connecting()
    {
        var (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock", "tcp:h:1", "--max-bandwidth", "1G", "--downtime-limit", "50", "--channels", "2", "--auto-converge", "--no-hint", "--no-balloon-skip", "--verify");
        Assert.Equal(1, code);
        Assert.Contains("cannot connect to the QMP socket /nonexistent.sock", stderr, StringComparison.Ordinal);
        (code, _, stderr) = CliTests.Ferry("", null, "migrate", "unix:/nonexistent.sock", "file:/tmp/vm.img", "--mapped-ram");
        Assert.Equal(1, code);
        Assert.Contains("cannot connect to the QMP socket /nonexistent.sock", stderr, StringComparison.Ordinal);
    }
}
