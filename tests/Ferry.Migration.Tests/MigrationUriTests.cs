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
        Assert.Equal(MigrationUriKind.Tcp, uri.Kind);
        Assert.Equal((host, port), (uri.Host, uri.Port));
        Assert.Equal(text, uri.ToString());
        Assert.True(uri.CarriesManyChannels);
    }

    [Theory]
    [InlineData("unix:/run/ferry/migrate.sock", MigrationUriKind.Unix, "/run/ferry/migrate.sock", "unix:/run/ferry/migrate.sock")]
    [InlineData("unix:relative.sock", MigrationUriKind.Unix, "relative.sock", "unix:relative.sock")]
    [InlineData("file:/var/snap/vm.img", MigrationUriKind.File, "/var/snap/vm.img", "file:/var/snap/vm.img")]
    [InlineData("file:/a,b/vm.img", MigrationUriKind.File, "/a,b/vm.img", "file:/a,b/vm.img")]
    [InlineData("file:/vm.img,offset=0", MigrationUriKind.File, "/vm.img", "file:/vm.img")]
    public void Accepts_paths(string text, MigrationUriKind kind, string path, string canonical)
    {
        var uri = MigrationUri.Parse(text);
        Assert.Equal((kind, path), (uri.Kind, uri.Path));
        Assert.Equal(canonical, uri.ToString());
        Assert.Equal(canonical, MigrationUri.Parse(canonical).ToString());
    }

    [Theory]
    [InlineData("exec:cat", "cat")]
    [InlineData("exec:ssh dest 'nc -U /run/m.sock'", "ssh dest 'nc -U /run/m.sock'")]
    [InlineData("exec:gzip -c > /tmp/x:y", "gzip -c > /tmp/x:y")]
    public void Accepts_commands_whole(string text, string command)
    {
        var uri = MigrationUri.Parse(text);
        Assert.Equal((MigrationUriKind.Exec, command), (uri.Kind, uri.Command));
        Assert.Equal(text, uri.ToString());
        Assert.False(uri.CarriesManyChannels);
    }

    [Fact]
    public void A_unix_path_must_fit_sun_path()
    {
        Assert.Equal(MigrationUri.MaxUnixPathBytes, MigrationUri.Parse("unix:/" + new string('a', 106)).Path.Length);
        var error = Assert.Throws<FormatException>(() => MigrationUri.Parse("unix:/" + new string('a', 107)));
        Assert.EndsWith("has a socket path of 108 bytes (a Unix socket path holds at most 107)", error.Message, StringComparison.Ordinal);
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
    [InlineData("rdma:1.2.3.4:5", "is not supported ('rdma:'; use tcp:HOST:PORT, unix:PATH, exec:COMMAND or file:PATH)")]
    [InlineData("/tmp/x", "is not supported (no scheme; use")]
    [InlineData("TCP:h:1", "is not supported ('TCP:';")]
    [InlineData("", "is not supported (no scheme;")]
    [InlineData("unix:", "has an empty path (use unix:PATH)")]
    [InlineData("exec:", "has no command (use exec:COMMAND)")]
    [InlineData("exec:   ", "has no command")]
    [InlineData("file:", "has an empty path (use file:PATH)")]
    [InlineData("file:,offset=0", "has an empty path")]
    [InlineData("file:/f,offset=4096", "has offset 4096: Ferry's snapshot file starts at offset 0")]
    [InlineData("file:/f,offset=4k", "has a bad offset '4k'")]
    public void Refuses_with_a_one_line_reason(string text, string reason)
    {
        var error = Assert.Throws<FormatException>(() => MigrationUri.Parse(text));
        Assert.Contains(reason, error.Message, StringComparison.Ordinal);
        Assert.StartsWith($"migration URI '{text}' ", error.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', error.Message);
    }

    [Theory]
    [InlineData("exec:cat\0x", "migration URI 'exec:cat\\0x' contains a NUL character")]
    [InlineData("exec:a\nrm -rf /", "migration URI 'exec:a rm -rf /' contains a line break")]
    public void Refuses_control_characters_and_keeps_the_message_on_one_line(string text, string message)
    {
        var error = Assert.Throws<FormatException>(() => MigrationUri.Parse(text));
        Assert.Equal(message, error.Message);
    }
}
