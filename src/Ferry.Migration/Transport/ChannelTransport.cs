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

/// <summary>A migration URI: today `tcp:HOST:PORT` (QEMU's syntax; HOST may be a name, an IPv4 or a [IPv6] address).</summary>
public sealed record MigrationUri(string Host, int Port)
{
    public static MigrationUri Parse(string uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        if (!uri.StartsWith("tcp:", StringComparison.Ordinal))
            throw new FormatException($"migration URI '{uri}' is not supported (use tcp:HOST:PORT)");
        var rest = uri[4..];
        var colon = rest.LastIndexOf(':');
        if (colon <= 0)
            throw new FormatException($"migration URI '{uri}' has no port (use tcp:HOST:PORT)");
        var host = rest[..colon];
        if (host.StartsWith('[') && host.EndsWith(']'))
            host = host[1..^1];
        if (host.Length == 0)
            throw new FormatException($"migration URI '{uri}' has an empty host");
        if (!int.TryParse(rest[(colon + 1)..], System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) || port is < 0 or > 65535)
            throw new FormatException($"migration URI '{uri}': port '{rest[(colon + 1)..]}' is not 0..65535");
        return new MigrationUri(host, port);
    }

    public override string ToString() => Host.Contains(':') ? $"tcp:[{Host}]:{Port}" : $"tcp:{Host}:{Port}";
}
