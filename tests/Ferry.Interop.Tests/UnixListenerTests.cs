using System.Net.Sockets;
using Xunit;

namespace Ferry.Interop.Tests;

public sealed class UnixListenerTests : IDisposable
{
    private readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("ferry-unix-");

    private string PathOf(string name) => Path.Combine(_dir.FullName, name);

    public void Dispose() => _dir.Delete(recursive: true);

    [Fact]
    public void A_new_socket_is_private_to_its_owner_whatever_the_umask()
    {
        var path = PathOf("qmp.sock");
        using var listener = UnixListener.Listen(path, UnixListener.PrivateMode, backlog: 1);
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
    }

    [Fact]
    public void A_wider_mode_is_applied_when_asked()
    {
        var path = PathOf("shared.sock");
        Assert.True(UnixListener.TryParseMode("0660", out var mode));
        using var listener = UnixListener.Listen(path, mode, backlog: 1);
        Assert.Equal(mode, File.GetUnixFileMode(path));
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
    }

    [Fact]
    public void A_socket_left_behind_by_a_process_that_is_gone_is_replaced()
    {
        var path = PathOf("stale.sock");
        // What a VMM that was killed leaves behind: a socket file nobody listens on. (.NET removes the file of a
        // socket it disposes, so the listener's file is moved away first; the moved inode is the stale socket.)
        var bound = PathOf("bound.sock");
        using (var gone = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified))
        {
            gone.Bind(new UnixDomainSocketEndPoint(bound));
            gone.Listen(1);
            File.Move(bound, path);
        }
        Assert.True(File.Exists(path));
        using var listener = UnixListener.Listen(path, UnixListener.PrivateMode, backlog: 1);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
    }

    [Fact]
    public void A_socket_someone_still_listens_on_is_refused_and_keeps_working()
    {
        var path = PathOf("busy.sock");
        using var first = UnixListener.Listen(path, UnixListener.PrivateMode, backlog: 4);
        var e = Assert.Throws<IOException>(() => UnixListener.Listen(path, UnixListener.PrivateMode, backlog: 1));
        Assert.Contains(path, e.Message, StringComparison.Ordinal);
        Assert.Contains("another process is listening", e.Message, StringComparison.Ordinal);
        using var client = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        client.Connect(new UnixDomainSocketEndPoint(path));
    }

    [Fact]
    public void A_path_that_is_not_a_socket_is_refused_and_left_untouched()
    {
        var path = PathOf("notes.txt");
        File.WriteAllText(path, "keep me");
        var e = Assert.Throws<IOException>(() => UnixListener.Listen(path, UnixListener.PrivateMode, backlog: 1));
        Assert.Contains("is not a socket", e.Message, StringComparison.Ordinal);
        Assert.Equal("keep me", File.ReadAllText(path));
    }

    [Fact]
    public void A_symbolic_link_is_not_followed_or_replaced()
    {
        var target = PathOf("target.txt");
        File.WriteAllText(target, "keep me");
        var link = PathOf("link.sock");
        File.CreateSymbolicLink(link, target);
        Assert.Throws<IOException>(() => UnixListener.Listen(link, UnixListener.PrivateMode, backlog: 1));
        Assert.Equal("keep me", File.ReadAllText(target));
        Assert.NotNull(new FileInfo(link).LinkTarget);
    }

    [Theory]
    [InlineData("0600", 0x180)]
    [InlineData("600", 0x180)]
    [InlineData("0660", 0x1B0)]
    [InlineData("0o666", 0x1B6)]
    [InlineData("0777", 0x1FF)]
    public void Modes_are_read_as_octal(string text, int expected)
    {
        Assert.True(UnixListener.TryParseMode(text, out var mode));
        Assert.Equal((UnixFileMode)expected, mode);
    }

    [Theory]
    [InlineData("")]
    [InlineData("0800")]
    [InlineData("rw-------")]
    [InlineData("4755")]
    [InlineData("12345")]
    [InlineData("-600")]
    public void Anything_else_is_not_a_mode(string text) => Assert.False(UnixListener.TryParseMode(text, out _));
}
