namespace Ferry.Migration.Transport;

/// <summary>The source's channels over any transport, each authenticated with TLS before the stream starts.</summary>
public sealed class TlsChannelConnector(IChannelConnector transport, MigrationTls tls, string? uriHost) : IChannelConnector
{
    public string Description => $"{transport.Description} (TLS)";

    public async Task<System.IO.Stream> ConnectAsync(CancellationToken cancel)
    {
        var stream = await transport.ConnectAsync(cancel).ConfigureAwait(false);
        return await tls.Wrap(stream, uriHost, cancel).ConfigureAwait(false);
    }
}

/// <summary>
/// The destination's channels over any transport, each authenticated with TLS before a record is read: a plain or
/// untrusted peer never gets as far as the stream header.
/// </summary>
public sealed class TlsChannelListener(IChannelListener transport, MigrationTls tls) : IChannelListener
{
    public string Description => $"{transport.Description} (TLS)";

    public async Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
    {
        var stream = await transport.AcceptAsync(cancel).ConfigureAwait(false);
        return await tls.Wrap(stream, uriHost: null, cancel).ConfigureAwait(false);
    }

    public void Dispose()
    {
        transport.Dispose();
        tls.Dispose();
    }
}
