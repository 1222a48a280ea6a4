using System.Net;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;

namespace Ferry.TestSupport;

/// <summary>
/// x509 credentials made by the test, written as QEMU's tls-creds-x509 directory layout (ca-cert.pem,
/// server-cert.pem, server-key.pem, client-cert.pem, client-key.pem). Nothing is committed.
/// </summary>
public sealed class TestCertificates : IDisposable
{
    private readonly List<string> _directories = [];

    public TestCertificates()
    {
        Ca = MakeCa("CN=Ferry Test CA");
        OtherCa = MakeCa("CN=Someone Else's CA");
    }

    public X509Certificate2 Ca { get; }

    public X509Certificate2 OtherCa { get; }

    /// <summary>A credentials directory: a server certificate for localhost/127.0.0.1 and a client one, both signed by <paramref name="signer"/> (default: <see cref="Ca"/>).</summary>
    public string Directory(string clientSubject = "CN=source.example,O=Ferry", X509Certificate2? signer = null, X509Certificate2? trusted = null, bool expired = false)
    {
        signer ??= Ca;
        var dir = System.IO.Directory.CreateTempSubdirectory("ferry-tls-").FullName;
        _directories.Add(dir);
        File.WriteAllText(Path.Combine(dir, "ca-cert.pem"), (trusted ?? Ca).ExportCertificatePem());
        var notBefore = expired ? DateTimeOffset.UtcNow.AddDays(-30) : DateTimeOffset.UtcNow.AddMinutes(-5);
        var notAfter = expired ? DateTimeOffset.UtcNow.AddDays(-1) : DateTimeOffset.UtcNow.AddDays(1);
        Write(dir, "server", Issue(signer, "CN=localhost", server: true, notBefore, notAfter));
        Write(dir, "client", Issue(signer, clientSubject, server: false, notBefore, notAfter));
        return dir;
    }

    public void Dispose()
    {
        foreach (var dir in _directories)
            System.IO.Directory.Delete(dir, recursive: true);
        Ca.Dispose();
        OtherCa.Dispose();
    }

    private static void Write(string dir, string prefix, (X509Certificate2 Certificate, ECDsa Key) issued)
    {
        File.WriteAllText(Path.Combine(dir, $"{prefix}-cert.pem"), issued.Certificate.ExportCertificatePem());
        File.WriteAllText(Path.Combine(dir, $"{prefix}-key.pem"), issued.Key.ExportPkcs8PrivateKeyPem());
        issued.Certificate.Dispose();
        issued.Key.Dispose();
    }

    private static X509Certificate2 MakeCa(string subject)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        request.CertificateExtensions.Add(new X509SubjectKeyIdentifierExtension(request.PublicKey, false));
        return request.CreateSelfSigned(DateTimeOffset.UtcNow.AddDays(-60), DateTimeOffset.UtcNow.AddDays(60));
    }

    private static (X509Certificate2, ECDsa) Issue(X509Certificate2 ca, string subject, bool server, DateTimeOffset notBefore, DateTimeOffset notAfter)
    {
        var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest(subject, key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, false));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(
            [new Oid(server ? "1.3.6.1.5.5.7.3.1" : "1.3.6.1.5.5.7.3.2")], false));
        if (server)
        {
            var names = new SubjectAlternativeNameBuilder();
            names.AddDnsName("localhost");
            names.AddIpAddress(IPAddress.Loopback);
            request.CertificateExtensions.Add(names.Build());
        }
        request.CertificateExtensions.Add(X509AuthorityKeyIdentifierExtension.CreateFromCertificate(ca, true, false));
        var serial = RandomNumberGenerator.GetBytes(12);
        serial[0] &= 0x7F;
        using var caKey = ca.GetECDsaPrivateKey()!;
        var generator = X509SignatureGenerator.CreateForECDsa(caKey);
        // The issuer's validity must cover the certificate's, or the request is refused; an expired one is inside it too.
        return (request.Create(ca.SubjectName, generator, notBefore, notAfter, serial), key);
    }
}
