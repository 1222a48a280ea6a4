namespace Ferry.Migration.Transport;

/// <summary>Opens the source's end of one migration channel (a byte stream in both directions).</summary>
public interface IChannelConnector
{
    /// <summary>Where the channels go, for messages (e.g. "tcp:10.0.0.2:4444").</summary>
    string Description { get; }

    Task<System.IO.Stream> ConnectAsync(CancellationToken cancel);
}

/// <summary>Accepts the destination's ends of migration channels.</summary>
public interface IChannelListener : IDisposable
{
    string Description { get; }

    Task<System.IO.Stream> AcceptAsync(CancellationToken cancel);
}

/// <summary>
/// A migration URI: today `tcp:HOST:PORT` (QEMU's syntax). HOST is a name, an IPv4 address or an IPv6 address in
/// brackets (`tcp:[::1]:4444`). The one parser of migration URIs: QMP's migrate, `ferry migrate` (through QMP) and
/// `ferry run --incoming` all come here, and a malformed URI is refused with a one-line reason before any name is
/// looked up.
/// </summary>
public sealed record MigrationUri(string Host, int Port)
{
    public static MigrationUri Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        if (!uri.StartsWith("tcp:", StringComparison.Ordinal))
            throw Bad(uri, "is not supported (use tcp:HOST:PORT)");
        var rest = uri[4..];
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
        if (port.Length is 0 or > 5 || !port.All(char.IsAsciiDigit) || int.Parse(port, System.Globalization.CultureInfo.InvariantCulture) > 65535)
            throw Bad(uri, $"port '{port}' is not 0..65535");
        return new MigrationUri(host, int.Parse(port, System.Globalization.CultureInfo.InvariantCulture));
    }

    private static FormatException Bad(string uri, string why) => new($"migration URI '{uri}' {why}");

    public override string ToString() => Host.Contains(':') ? $"tcp:[{Host}]:{Port}" : $"tcp:{Host}:{Port}";
}
