using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>The one migration URI parser: what it accepts, and a one-line reason for what it refuses (before any name lookup).</summary>
public sealed class MigrationUriTests
{
    [Theory]
    [InlineData("tcp:10.0.0.2:4444", "10.0.0.2", 4444)]
    [InlineData("tcp:dest-host.example:0", "dest-host.example", 0)]
    [InlineData("tcp:localhost:65535", "localhost", 65535)]
    [InlineData("tcp:[::1]:4444", "::1", 4444)]
    [InlineData("tcp:[fe80::1:2]:80", "fe80::1:2", 80)]
    public void Accepts(string text, string host, int port)
    {
        var uri = MigrationUri.Parse(text);
        Assert.Equal((host, port), (uri.Host, uri.Port));
        Assert.Equal(text, uri.ToString());
    }

    [Theory]
    [InlineData("tcp:[::1", "has '[' without ']'")]
    [InlineData("tcp:[::1]", "has no port after ']'")]
    [InlineData("tcp:[::1]4444", "has no port after ']'")]
    [InlineData("tcp:[nothost]:1", "'[nothost]' is not an IPv6 address")]
    [InlineData("tcp:[10.0.0.1]:1", "'[10.0.0.1]' is not an IPv6 address")]
    [InlineData("tcp:::1:4444", "IPv6 address without brackets")]
    [InlineData("tcp:host", "has no port")]
    [InlineData("tcp::4444", "has an empty host")]
    [InlineData("tcp:ho st:1", "host 'ho st' is not a host name")]
    [InlineData("tcp:a]:1", "host 'a]' is not a host name")]
    [InlineData("tcp:host:", "port '' is not 0..65535")]
    [InlineData("tcp:host:65536", "port '65536' is not 0..65535")]
    [InlineData("tcp:host:+1", "port '+1' is not 0..65535")]
    [InlineData("tcp:host:99999999999", "port '99999999999' is not 0..65535")]
    [InlineData("unix:/tmp/x", "is not supported")]
    public void Refuses_with_a_one_line_reason(string text, string reason)
    {
        var error = Assert.Throws<FormatException>(() => MigrationUri.Parse(text));
        Assert.Contains(reason, error.Message, StringComparison.Ordinal);
        Assert.StartsWith($"migration URI '{text}' ", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', error.Message);
    }
}
