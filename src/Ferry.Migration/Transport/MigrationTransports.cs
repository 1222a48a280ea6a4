using Ferry.Migration.Engine;

namespace Ferry.Migration.Transport;

/// <summary>
/// The one place a parsed <see cref="MigrationUri"/> becomes channels: the source's connector, the destination's
/// listener, and the check (QEMU's migration_channels_and_transport_compatible) that the migration's settings suit
/// the transport. Anything that wraps every channel of a transport (e.g. encryption) belongs here.
/// </summary>
public static class MigrationTransports
{
    /// <summary>
    /// The source's end of a channel transport (tcp:, unix:, exec:), every channel under TLS when tls-creds is set
    /// in <paramref name="parameters"/>. Throws <see cref="MigrationTlsException"/> naming a credential file that
    /// cannot be used, before anything connects.
    /// </summary>
    public static IChannelConnector Connect(MigrationUri uri, MigrationParameters? parameters = null)
    {
        var tls = parameters is null ? null : MigrationTls.For(parameters, TlsEndpoint.Client);
        IChannelConnector transport = uri.Kind switch
        {
            MigrationUriKind.Tcp => new TcpChannelConnector(uri),
            MigrationUriKind.Unix => new UnixChannelConnector(uri),
            MigrationUriKind.Exec => new ExecChannelConnector(uri),
            _ => throw new ArgumentException($"{uri} is a file, not a channel transport", nameof(uri)),
        };
        // The name the destination's certificate must carry: tls-hostname, else the host a tcp: URI names.
        return tls is null ? transport : new TlsChannelConnector(transport, tls, uri.Kind == MigrationUriKind.Tcp ? uri.Host : null);
    }

    /// <summary>
    /// The destination's end of a channel transport, listening (tcp:, unix:) or with its command running (exec:)
    /// when this returns; with tls-creds set in <paramref name="parameters"/> every channel must authenticate with
    /// TLS before a record is read. Throws <see cref="IOException"/> naming the URI or the credential file when it cannot.
    /// </summary>
    public static IChannelListener Listen(MigrationUri uri, MigrationParameters? parameters = null)
    {
        // Credentials first: a destination that cannot do TLS must not listen at all.
        var tls = parameters is null ? null : MigrationTls.For(parameters, TlsEndpoint.Server);
        IChannelListener transport = uri.Kind switch
        {
            MigrationUriKind.Tcp => new TcpChannelListener(uri),
            MigrationUriKind.Unix => new UnixChannelListener(uri),
            MigrationUriKind.Exec => new ExecChannelListener(uri),
            _ => throw new ArgumentException($"{uri} is a file, not a channel transport", nameof(uri)),
        };
        return tls is null ? transport : new TlsChannelListener(transport, tls);
    }

    /// <summary>
    /// Null when an outgoing migration with these settings can use <paramref name="uri"/>; otherwise QEMU's reason
    /// (its wording first, then what to change): see <see cref="CheckIncoming"/> for files, and several channels
    /// need a transport that carries several.
    /// </summary>
    public static string? CheckOutgoing(MigrationUri uri, MigrationParameters parameters, MigrationCapabilities capabilities)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (CheckMappedRam(uri, capabilities, "writes") is { } error)
            return error;
        var channels = parameters.ChannelsFor(capabilities);
        if (uri.Kind != MigrationUriKind.File && !uri.CarriesManyChannels && channels > 1)
            return $"Migration requires multi-channel URIs (e.g. tcp): {uri} carries one channel and multifd asks for {channels}; set multifd-channels to 1 or turn the multifd capability off";
        if (capabilities.PostcopyRam)
        {
            if (capabilities.MappedRam)
                return "Mapped-ram migration is incompatible with postcopy: turn the postcopy-ram or the mapped-ram capability off";
            if (capabilities.Verify)
                return "ferry-verify is incompatible with postcopy: the digests are compared before the guest runs on the destination, postcopy runs it there before the last pages arrived; turn one of the capabilities off";
            if (CheckPostcopy(uri) is { } postcopy)
                return postcopy;
        }
        return null;
    }

    /// <summary>
    /// Null when postcopy (and its recovery) can run over <paramref name="uri"/>: it opens an urgent channel next to
    /// the bulk ones, so the transport must carry several.
    /// </summary>
    public static string? CheckPostcopy(MigrationUri uri)
    {
        ArgumentNullException.ThrowIfNull(uri);
        return uri.CarriesManyChannels ? null
            : $"Postcopy requires multi-channel URIs (e.g. tcp or unix): {uri} carries one channel and postcopy adds an urgent channel for the pages the guest waits for; turn the postcopy-ram capability off";
    }

    /// <summary>
    /// Null when an incoming migration can use <paramref name="uri"/> with these capabilities; otherwise why not.
    /// mapped-ram needs a file (QEMU: a seekable transport), and a file: URI needs mapped-ram, because the
    /// fixed-offset snapshot file is the only thing Ferry keeps in a file (QEMU 9 also puts its plain stream there).
    /// </summary>
    public static string? CheckIncoming(MigrationUri uri, MigrationCapabilities capabilities) => CheckMappedRam(uri, capabilities, "reads");

    private static string? CheckMappedRam(MigrationUri uri, MigrationCapabilities capabilities, string verb)
    {
        ArgumentNullException.ThrowIfNull(uri);
        ArgumentNullException.ThrowIfNull(capabilities);
        if (capabilities.MappedRam && uri.Kind != MigrationUriKind.File)
            return $"Migration requires seekable transport (e.g. file): the mapped-ram capability is on and {uri} is not a file: URI";
        if (uri.Kind == MigrationUriKind.File && !capabilities.MappedRam)
            return $"{uri} needs the mapped-ram capability: Ferry {verb} a file only as the fixed-offset snapshot file";
        return null;
    }
}
