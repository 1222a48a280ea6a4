using System.Net.Security;
using System.Security.Authentication;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.Migration.Transport;

/// <summary>Which end of a TLS channel a side is: the destination serves, the source connects.</summary>
public enum TlsEndpoint
{
    Server,
    Client,
}

/// <summary>
/// TLS for migration channels: x509 credentials laid out as QEMU's `tls-creds-x509` object reads them from its
/// directory (ca-cert.pem, server-cert.pem + server-key.pem on the destination, client-cert.pem + client-key.pem on
/// the source), TLS 1.3 only, and both ends authenticated: the destination requires a client certificate, each side
/// accepts only a chain that ends at the directory's CA, the source checks the destination's name (tls-hostname, or
/// the host of the URI), and the destination can restrict which client subjects may connect (tls-authz).
/// Loaded once per migration; every channel (data and return path alike) is wrapped by <see cref="Wrap"/> before a
/// single byte of the stream is read or written.
/// </summary>
public sealed class MigrationTls : IDisposable
{
    public const string CaFile = "ca-cert.pem";

    private readonly X509Certificate2 _ca;
    private readonly X509Certificate2 _own;
    private readonly TlsEndpoint _endpoint;
    private readonly string? _hostname;
    private readonly IReadOnlySet<string> _allowedSubjects;
    private readonly SslStreamCertificateContext? _serverContext;

    private MigrationTls(TlsEndpoint endpoint, X509Certificate2 ca, X509Certificate2 own, string? hostname, IReadOnlySet<string> allowedSubjects)
    {
        _endpoint = endpoint;
        _ca = ca;
        _own = own;
        _hostname = hostname;
        _allowedSubjects = allowedSubjects;
        if (endpoint == TlsEndpoint.Server)
            _serverContext = SslStreamCertificateContext.Create(own, additionalCertificates: null, offline: true);
    }

    /// <summary>The source's first byte inside TLS: it trusts the destination (TLS 1.3 lets the server finish first).</summary>
    private const byte Confirmation = 0xF5;

    /// <summary>How long a handshake may take before the channel is given up.</summary>
    public static TimeSpan HandshakeTimeout { get; } = TimeSpan.FromSeconds(10);

    /// <summary>
    /// Loads the credentials a side needs from <paramref name="directory"/>. <paramref name="hostname"/>: the name
    /// the source expects in the destination's certificate (null: the URI's host, given to <see cref="Wrap"/>).
    /// <paramref name="allowedSubjects"/>: client subjects the destination admits (empty: any the CA signed).
    /// Throws <see cref="MigrationTlsException"/> naming the file that is missing or unreadable.
    /// </summary>
    public static MigrationTls Load(string directory, TlsEndpoint endpoint, string? hostname = null, IEnumerable<string>? allowedSubjects = null)
    {
        if (!Directory.Exists(directory))
            throw new MigrationTlsException($"tls-creds '{directory}' is not a directory");
        var prefix = endpoint == TlsEndpoint.Server ? "server" : "client";
        var ca = ReadCertificate(Path.Combine(directory, CaFile));
        X509Certificate2 own;
        var certPath = Path.Combine(directory, $"{prefix}-cert.pem");
        var keyPath = Path.Combine(directory, $"{prefix}-key.pem");
        foreach (var path in new[] { certPath, keyPath })
        {
            if (!File.Exists(path))
                throw new MigrationTlsException($"tls-creds '{directory}': {Path.GetFileName(path)} is missing (the {(endpoint == TlsEndpoint.Server ? "destination" : "source")} needs it)");
        }
        try
        {
            using var pem = X509Certificate2.CreateFromPemFile(certPath, keyPath);
            // A key from PEM is ephemeral; OpenSSL-backed SslStream takes it as it is, but an exported and
            // re-imported copy is what every platform accepts for a server or client certificate.
            own = X509CertificateLoader.LoadPkcs12(pem.Export(X509ContentType.Pkcs12), password: null);
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException or ArgumentException)
        {
            throw new MigrationTlsException($"tls-creds '{directory}': cannot load {Path.GetFileName(certPath)} with {Path.GetFileName(keyPath)}: {e.Message}", e);
        }
        var subjects = new HashSet<string>(
            (allowedSubjects ?? []).Select(NormalizeSubject).Where(s => s.Length > 0), StringComparer.OrdinalIgnoreCase);
        return new MigrationTls(endpoint, ca, own, hostname, subjects);
    }

    /// <summary>The TLS a side uses under <paramref name="parameters"/>: null when tls-creds is empty (plain channels).</summary>
    public static MigrationTls? For(Engine.MigrationParameters parameters, TlsEndpoint endpoint) =>
        parameters.TlsCreds.Length == 0
            ? null
            : Load(parameters.TlsCreds, endpoint, parameters.TlsHostname.Length > 0 ? parameters.TlsHostname : null, parameters.AllowedClientSubjects);

    /// <summary>
    /// Authenticates <paramref name="transport"/> and returns the encrypted channel. <paramref name="uriHost"/>: the
    /// host the source connected to (the destination's expected name when tls-hostname is not set). Throws
    /// <see cref="MigrationTlsException"/> with a one-line reason when the peer does not speak TLS or is not trusted.
    /// </summary>
    public async Task<TlsChannel> Wrap(System.IO.Stream transport, string? uriHost, CancellationToken cancel)
    {
        var channel = new TlsChannel(transport, this);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(HandshakeTimeout);
        try
        {
            if (_endpoint == TlsEndpoint.Server)
            {
                await channel.AuthenticateAsServerAsync(new SslServerAuthenticationOptions
                {
                    ServerCertificateContext = _serverContext,
                    ClientCertificateRequired = true,
                    EnabledSslProtocols = SslProtocols.Tls13,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                    CertificateChainPolicy = TrustOnlyTheCa(),
                    // An untrusted source still completes the handshake, so that it can be told why over an
                    // encrypted channel (its user reads the reason, not "connection closed"); nothing it sends is
                    // ever read: the channel is refused right below.
                    RemoteCertificateValidationCallback = (_, certificate, _, errors) => channel.InspectAndLetFinish(certificate, errors),
                }, deadline.Token).ConfigureAwait(false);
                if (channel.Rejection is { } refused)
                {
                    await TellAndClose(channel, refused).ConfigureAwait(false);
                    throw new MigrationTlsException(refused);
                }
                // The source checks this side's certificate only after the handshake: its byte says it did, and
                // its silence or close that it did not.
                var confirmation = new byte[1];
                if (await channel.ReadAtLeastAsync(confirmation, 1, throwOnEndOfStream: false, deadline.Token).ConfigureAwait(false) != 1 || confirmation[0] != Confirmation)
                    throw new MigrationTlsException("TLS: the source closed the channel after the handshake: it did not accept this destination's certificate (the source says why)");
            }
            else
            {
                var expected = _hostname ?? uriHost ?? throw new MigrationTlsException("TLS needs the destination's name: set tls-hostname");
                await channel.AuthenticateAsClientAsync(new SslClientAuthenticationOptions
                {
                    TargetHost = expected,
                    ClientCertificates = [_own],
                    EnabledSslProtocols = SslProtocols.Tls13,
                    CertificateRevocationCheckMode = X509RevocationMode.NoCheck,
                    CertificateChainPolicy = TrustOnlyTheCa(),
                    RemoteCertificateValidationCallback = (_, certificate, _, errors) => channel.Inspect(certificate, errors),
                }, deadline.Token).ConfigureAwait(false);
                await channel.WriteAsync(new[] { Confirmation }, deadline.Token).ConfigureAwait(false);
                await channel.FlushAsync(deadline.Token).ConfigureAwait(false);
            }
            return channel;
        }
        catch (Exception e) when (e is AuthenticationException or IOException or OperationCanceledException or System.ComponentModel.Win32Exception)
        {
            var reason = channel.Rejection ?? Describe(e, cancel.IsCancellationRequested, _endpoint);
            await channel.DisposeAsync().ConfigureAwait(false);
            if (e is OperationCanceledException && cancel.IsCancellationRequested)
                throw;
            throw new MigrationTlsException(reason, e);
        }
    }

    /// <summary>
    /// Sends a refused source the reason, as the destination's FAILED reply it waits for, then closes. What the source
    /// sends meanwhile (its header) is discarded unread for a moment, so that its writes do not fail with a broken
    /// pipe before it gets to read the reason.
    /// </summary>
    private static async Task TellAndClose(TlsChannel channel, string reason)
    {
        try
        {
            Stream.ReturnPath.WriteFailed(channel, reason);
            await channel.ShutdownAsync().ConfigureAwait(false);
            using var linger = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            var discard = new byte[16 << 10];
            while (await channel.ReadAsync(discard, linger.Token).ConfigureAwait(false) > 0)
            {
            }
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException or OperationCanceledException or AuthenticationException)
        {
            // The source is gone or kept talking: it was told, or nobody is there to tell.
        }
        await channel.DisposeAsync().ConfigureAwait(false);
    }

    public void Dispose()
    {
        _ca.Dispose();
        _own.Dispose();
    }

    /// <summary>Decides one peer certificate; returns the reason it is refused, or null.</summary>
    internal string? RefusalOf(X509Certificate? certificate, SslPolicyErrors errors)
    {
        var peer = _endpoint == TlsEndpoint.Server ? "the source" : "the destination";
        if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
            return $"TLS: {peer} sent no certificate";
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateChainErrors))
            return $"TLS: {peer}'s certificate '{certificate.Subject}' is not trusted by {CaFile} ({ChainProblem(certificate)})";
        if (errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
            return $"TLS: the destination's certificate '{certificate.Subject}' does not name the host the source expects (set tls-hostname to the name in it)";
        if (errors != SslPolicyErrors.None)
            return $"TLS: {peer}'s certificate is refused ({errors})";
        if (_endpoint == TlsEndpoint.Server && _allowedSubjects.Count > 0 && !_allowedSubjects.Contains(NormalizeSubject(certificate.Subject)))
            return $"TLS: the source's certificate subject '{certificate.Subject}' is not in tls-authz";
        return null;
    }

    private X509ChainPolicy TrustOnlyTheCa()
    {
        var policy = new X509ChainPolicy
        {
            TrustMode = X509ChainTrustMode.CustomRootTrust,
            RevocationMode = X509RevocationMode.NoCheck,
        };
        policy.CustomTrustStore.Add(_ca);
        return policy;
    }

    private string ChainProblem(X509Certificate certificate)
    {
        using var chain = new X509Chain { ChainPolicy = TrustOnlyTheCa() };
        using var cert = new X509Certificate2(certificate);
        chain.Build(cert);
        var statuses = chain.ChainStatus.Select(s => s.Status).Where(s => s != X509ChainStatusFlags.NoError).Distinct().ToArray();
        if (statuses.Contains(X509ChainStatusFlags.NotTimeValid))
            return $"expired or not yet valid: valid {cert.NotBefore:u} to {cert.NotAfter:u}";
        if (statuses.Contains(X509ChainStatusFlags.UntrustedRoot) || statuses.Contains(X509ChainStatusFlags.PartialChain))
            return "signed by another CA";
        return statuses.Length == 0 ? "chain error" : string.Join(", ", statuses);
    }

    private static string Describe(Exception e, bool cancelled, TlsEndpoint endpoint)
    {
        var (peer, self) = endpoint == TlsEndpoint.Server ? ("source", "destination") : ("destination", "source");
        if (e is OperationCanceledException && !cancelled)
            return $"TLS: the handshake did not finish within {HandshakeTimeout.TotalSeconds:0} s (is the peer using TLS?)";
        var inner = e.InnerException?.Message;
        // A plain peer answers the handshake with stream bytes, not a TLS record; say that instead of OpenSSL's words.
        if (e is AuthenticationException && (e.Message.Contains("frame", StringComparison.OrdinalIgnoreCase) || inner?.Contains("wrong version number", StringComparison.OrdinalIgnoreCase) == true))
            return $"TLS: the {peer} does not speak TLS (is tls-creds set on both sides?)";
        if (e is IOException or AuthenticationException && (e.Message.Contains("reset", StringComparison.OrdinalIgnoreCase) || e.Message.Contains("0 bytes", StringComparison.OrdinalIgnoreCase) || e.Message.Contains("closed", StringComparison.OrdinalIgnoreCase)))
            return $"TLS: the {peer} ended the handshake: it did not accept this {self}'s certificate (the {peer} says why), or it does not use TLS";
        return $"TLS handshake failed: {e.Message}{(inner is null ? "" : $" ({inner})")}";
    }

    private static X509Certificate2 ReadCertificate(string path)
    {
        if (!File.Exists(path))
            throw new MigrationTlsException($"tls-creds '{Path.GetDirectoryName(path)}': {Path.GetFileName(path)} is missing");
        try
        {
            return X509Certificate2.CreateFromPem(File.ReadAllText(path));
        }
        catch (Exception e) when (e is CryptographicException or IOException or UnauthorizedAccessException)
        {
            throw new MigrationTlsException($"tls-creds: cannot read {path}: {e.Message}", e);
        }
    }

    /// <summary>"CN=a, O=b" and "CN=a,O=b" are one subject.</summary>
    internal static string NormalizeSubject(string subject) =>
        string.Join(",", subject.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries));
}

/// <summary>An authenticated migration channel: an <see cref="SslStream"/> that still lets the transport be reached (liveness settings, waking blocked readers).</summary>
public sealed class TlsChannel : SslStream
{
    private readonly MigrationTls _tls;

    internal TlsChannel(System.IO.Stream transport, MigrationTls tls) : base(transport, leaveInnerStreamOpen: false) => _tls = tls;

    /// <summary>The stream underneath (a socket's NetworkStream, a pipe).</summary>
    public System.IO.Stream Transport => InnerStream;

    /// <summary>Why the peer's certificate was refused (set during the handshake).</summary>
    internal string? Rejection { get; private set; }

    /// <summary>Records the verdict on the peer's certificate in <see cref="Rejection"/>; true when it is accepted.</summary>
    internal bool Inspect(X509Certificate? certificate, SslPolicyErrors errors)
    {
        Rejection = _tls.RefusalOf(certificate, errors);
        return Rejection is null;
    }

    /// <summary>
    /// The destination's verdict on a source: recorded, and the handshake allowed to finish either way, so that a
    /// refused source can be told why inside TLS; the caller refuses the channel on <see cref="Rejection"/> before
    /// reading anything from it.
    /// </summary>
    internal bool InspectAndLetFinish(X509Certificate? certificate, SslPolicyErrors errors)
    {
        Inspect(certificate, errors);
        return true;
    }
}

/// <summary>TLS could not be set up or a peer was refused; the message is one line for the user.</summary>
public sealed class MigrationTlsException : IOException
{
    public MigrationTlsException() { }

    public MigrationTlsException(string message) : base(message) { }

    public MigrationTlsException(string message, Exception inner) : base(message, inner) { }
}
