using System.Globalization;
using System.Text;

namespace Ferry.Migration.Transport;

/// <summary>What a migration URI names; each kind has its own fields in <see cref="MigrationUri"/>.</summary>
public enum MigrationUriKind
{
    /// <summary>`tcp:HOST:PORT`: one TCP connection per channel.</summary>
    Tcp,

    /// <summary>`unix:PATH`: one Unix stream socket connection per channel.</summary>
    Unix,

    /// <summary>
    /// `exec:COMMAND`: one channel through a command run by `/bin/sh -c`. The source writes the stream to its stdin
    /// and reads the destination's replies from its stdout; the destination reads the stream from its stdout and
    /// writes its replies to its stdin (QEMU's semantics, both ends read and write).
    /// </summary>
    Exec,

    /// <summary>`file:PATH`: the fixed-offset snapshot file (QEMU 9's mapped-ram), not a channel.</summary>
    File,
}

/// <summary>
/// A parsed migration URI, with QEMU's syntax: `tcp:HOST:PORT` (HOST a name, an IPv4 address or an IPv6 address in
/// brackets, `tcp:[::1]:4444`), `unix:PATH`, `exec:COMMAND`, `file:PATH` (QEMU's optional `,offset=0` accepted).
/// The one parser of migration URIs: QMP's migrate and migrate-incoming, `ferry migrate` and `ferry run --incoming`
/// all come here, and a malformed URI is refused with a one-line reason naming it, before any name is looked up,
/// any socket made or any command run. Only the fields of its <see cref="Kind"/> are set.
/// </summary>
public sealed record MigrationUri
{
    /// <summary>sun_path holds 108 bytes with its terminating NUL.</summary>
    public const int MaxUnixPathBytes = 107;

    private MigrationUri(MigrationUriKind kind, string host = "", int port = 0, string path = "", string command = "")
    {
        Kind = kind;
        Host = host;
        Port = port;
        Path = path;
        Command = command;
    }

    public MigrationUriKind Kind { get; }

    /// <summary>tcp: the host name or address (an IPv6 address without its brackets).</summary>
    public string Host { get; }

    /// <summary>tcp: the port (0 when listening: any free port).</summary>
    public int Port { get; }

    /// <summary>unix: the socket's path; file: the snapshot file's path.</summary>
    public string Path { get; }

    /// <summary>exec: the shell command.</summary>
    public string Command { get; }

    /// <summary>
    /// Whether the transport carries more than one channel (QEMU's transport_supports_multi_channels): tcp: and
    /// unix: open a connection per channel; exec: runs one command, so it carries exactly one.
    /// </summary>
    public bool CarriesManyChannels => Kind is MigrationUriKind.Tcp or MigrationUriKind.Unix;

    /// <summary>This URI when it is of <paramref name="kind"/>; a transport's constructor checks what it was given with it.</summary>
    internal MigrationUri Expect(MigrationUriKind kind) =>
        Kind == kind ? this : throw new ArgumentException($"{this} is not a {kind.ToString().ToLowerInvariant()}: URI");

    public static MigrationUri Tcp(string host, int port) => new(MigrationUriKind.Tcp, host: host, port: port);

    public static MigrationUri Unix(string path) => new(MigrationUriKind.Unix, path: path);

    public static MigrationUri Exec(string command) => new(MigrationUriKind.Exec, command: command);

    public static MigrationUri File(string path) => new(MigrationUriKind.File, path: path);

    public static MigrationUri Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        if (uri.Contains('\0'))
            throw Bad(uri.Replace("\0", "\\0", StringComparison.Ordinal), "contains a NUL character");
        if (uri.Contains('\n') || uri.Contains('\r'))
            throw Bad(uri.ReplaceLineEndings(" "), "contains a line break");
        var colon = uri.IndexOf(':', StringComparison.Ordinal);
        var scheme = colon < 0 ? "" : uri[..colon];
        var rest = colon < 0 ? "" : uri[(colon + 1)..];
        return scheme switch
        {
            "tcp" => ParseTcp(uri, rest),
            "unix" => ParseUnix(uri, rest),
            "exec" => rest.Trim().Length > 0 ? Exec(rest) : throw Bad(uri, "has no command (use exec:COMMAND)"),
            "file" => ParseFile(uri, rest),
            _ => throw Bad(uri, $"is not supported ({(colon < 0 ? "no scheme" : $"'{scheme}:'")}; use tcp:HOST:PORT, unix:PATH, exec:COMMAND or file:PATH)"),
        };
    }

    private static MigrationUri ParseTcp(string uri, string rest)
    {
        string host, port;
        if (rest.StartsWith('['))
        {
            var close = rest.IndexOf(']', StringComparison.Ordinal);
            if (close < 0)
                throw Bad(uri, "has '[' without ']' (an IPv6 address is written tcp:[ADDRESS]:PORT)");
            host = rest[1..close];
            if (!System.Net.IPAddress.TryParse(host, out var address) || address.AddressFamily != System.Net.Sockets.AddressFamily.InterNetworkV6)
                throw Bad(uri, $"'[{host}]' is not an IPv6 address");
            if (close + 1 >= rest.Length || rest[close + 1] != ':')
                throw Bad(uri, "has no port after ']' (use tcp:[ADDRESS]:PORT)");
            port = rest[(close + 2)..];
        }
        else
        {
            var colon = rest.LastIndexOf(':');
            if (colon < 0)
                throw Bad(uri, "has no port (use tcp:HOST:PORT)");
            host = rest[..colon];
            port = rest[(colon + 1)..];
            if (host.Length == 0)
                throw Bad(uri, "has an empty host");
            if (host.Contains(':'))
                throw Bad(uri, "has an IPv6 address without brackets (use tcp:[ADDRESS]:PORT)");
            if (host.Length > 253 || !host.All(c => char.IsAsciiLetterOrDigit(c) || c is '.' or '-' or '_'))
                throw Bad(uri, $"host '{host}' is not a host name or an IPv4 address");
        }
        if (port.Length is 0 or > 5 || !port.All(char.IsAsciiDigit) || int.Parse(port, CultureInfo.InvariantCulture) > 65535)
            throw Bad(uri, $"port '{port}' is not 0..65535");
        return Tcp(host, int.Parse(port, CultureInfo.InvariantCulture));
    }

    private static MigrationUri ParseUnix(string uri, string path)
    {
        if (path.Length == 0)
            throw Bad(uri, "has an empty path (use unix:PATH)");
        var bytes = Encoding.UTF8.GetByteCount(path);
        if (bytes > MaxUnixPathBytes)
            throw Bad(uri, $"has a socket path of {bytes} bytes (a Unix socket path holds at most {MaxUnixPathBytes})");
        return Unix(path);
    }

    /// <summary>QEMU's `file:PATH[,offset=N]`: the offset is where the stream starts in the file; Ferry's file always starts at 0.</summary>
    private static MigrationUri ParseFile(string uri, string path)
    {
        var comma = path.LastIndexOf(',');
        if (comma >= 0 && path.AsSpan(comma + 1).StartsWith("offset=", StringComparison.Ordinal))
        {
            var offset = path[(comma + 1 + "offset=".Length)..];
            if (offset.Length == 0 || !offset.All(char.IsAsciiDigit))
                throw Bad(uri, $"has a bad offset '{offset}'");
            if (offset.Any(c => c != '0'))
                throw Bad(uri, $"has offset {offset}: Ferry's snapshot file starts at offset 0");
            path = path[..comma];
        }
        if (path.Length == 0)
            throw Bad(uri, "has an empty path (use file:PATH)");
        return File(path);
    }

    private static FormatException Bad(string uri, string why) => new($"migration URI '{uri}' {why}");

    /// <summary>The URI as QEMU writes it (parsing it gives this value back).</summary>
    public override string ToString() => Kind switch
    {
        MigrationUriKind.Tcp => Host.Contains(':') ? $"tcp:[{Host}]:{Port}" : $"tcp:{Host}:{Port}",
        MigrationUriKind.Unix => $"unix:{Path}",
        MigrationUriKind.Exec => $"exec:{Command}",
        _ => $"file:{Path}",
    };
}
