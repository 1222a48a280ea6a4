using System.Net.Sockets;

namespace Ferry.Interop;

/// <summary>
/// Listening Unix stream sockets for the control surfaces (QMP, the console): private to their owner by default
/// (whoever can connect to a VMM's control socket controls the VM), and never taking over a path that a running
/// process still serves or that is not a socket at all.
/// </summary>
public static class UnixListener
{
    /// <summary>The mode a control socket gets unless the user widens it: read and write for the owner only.</summary>
    public const UnixFileMode PrivateMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    /// <summary>
    /// Creates <paramref name="path"/> as a listening socket with <paramref name="mode"/>. A socket file left
    /// behind by a process that is gone is replaced; a path some process still listens on, or that is not a socket,
    /// is refused with an <see cref="IOException"/> naming it.
    /// </summary>
    public static Socket Listen(string path, UnixFileMode mode, int backlog)
    {
        RemoveStale(path);
        var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            listener.Bind(new UnixDomainSocketEndPoint(path));
            // Between bind and listen a connect is refused, so setting the mode here leaves no window in which a
            // client could connect through the umask's wider default.
            File.SetUnixFileMode(path, mode);
            listener.Listen(backlog);
            return listener;
        }
        catch (Exception e) when (e is SocketException or IOException or UnauthorizedAccessException)
        {
            listener.Dispose();
            throw new IOException($"cannot listen on {path}: {e.Message}", e);
        }
    }

    /// <summary>Parses a mode as the user writes it for a socket (octal, e.g. 0660 or 660).</summary>
    public static bool TryParseMode(string text, out UnixFileMode mode)
    {
        mode = 0;
        var digits = text.StartsWith("0o", StringComparison.OrdinalIgnoreCase) ? text[2..] : text;
        if (digits.Length is 0 or > 4 || digits.Any(c => c is < '0' or > '7'))
            return false;
        var value = Convert.ToInt32(digits, 8);
        if (value > 0x1FF) // 0777
            return false; // setuid/setgid/sticky bits mean nothing on a socket
        mode = (UnixFileMode)value;
        return true;
    }

    private static void RemoveStale(string path)
    {
        if (!File.Exists(path))
            return;
        if (!IsSocket(path))
            throw new IOException($"cannot listen on {path}: it exists and is not a socket (not replacing it)");
        using var probe = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        try
        {
            probe.Connect(new UnixDomainSocketEndPoint(path));
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            // Nobody listens: a socket file its process left behind.
            File.Delete(path);
            return;
        }
        catch (SocketException e)
        {
            throw new IOException($"cannot listen on {path}: it exists and cannot be checked ({e.Message})", e);
        }
        throw new IOException($"cannot listen on {path}: another process is listening on it");
    }

    /// <summary>A socket file cannot be opened: open(2) fails with ENXIO for it and for nothing else a path can name here.</summary>
    private static bool IsSocket(string path)
    {
        var fd = Libc.Open(path, Libc.O_RDONLY | Libc.O_NONBLOCK | Libc.O_NOFOLLOW | Libc.O_CLOEXEC, 0);
        if (fd >= 0)
        {
            Libc.Close(fd);
            return false;
        }
        return Libc.LastErrno == Libc.ENXIO;
    }
}
