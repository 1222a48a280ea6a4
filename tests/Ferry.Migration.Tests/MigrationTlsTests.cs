using System.Net;
using Ferry.Migration.Engine;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Ferry.TestSupport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>Migration over TLS with mutual authentication, over loopback TCP, without KVM.</summary>
public sealed class MigrationTlsTests : IDisposable
{
    private const ulong MiB = 1UL << 20;
    private readonly TestCertificates _certificates = new();

    public void Dispose() => _certificates.Dispose();

    private sealed record Outcome(MigrationStats? Stats, MigrationException? SourceError, Exception? DestinationError, SyntheticVm Vm, SyntheticTarget Target) : IDisposable
    {
        public void Dispose()
        {
            Target.Dispose();
            Vm.Dispose();
        }
    }

    /// <summary>A running synthetic guest migrated from <paramref name="clientDir"/>'s credentials to <paramref name="serverDir"/>'s (null: plain on that side).</summary>
    private static Outcome Migrate(string? serverDir, string? clientDir, string[]? authz = null, string? hostname = null, Func<IPEndPoint, TcpProxy>? proxy = null)
    {
        var vm = new SyntheticVm(16 * MiB);
        vm.Fill(0, 0, 1000, 7);
        vm.Start();
        var target = new SyntheticTarget(vm.Blocks);
        var tcp = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        using IChannelListener listener = serverDir is null ? tcp : new TlsChannelListener(tcp, MigrationTls.Load(serverDir, TlsEndpoint.Server, allowedSubjects: authz));
        using var relay = proxy?.Invoke(new IPEndPoint(IPAddress.Loopback, tcp.Uri.Port));
        var uri = MigrationUri.Parse($"tcp:127.0.0.1:{relay?.Port ?? tcp.Uri.Port}");
        var receive = Task.Run(() => MigrationReceiver.Receive(target, listener, CancellationToken.None, TimeSpan.FromSeconds(5)));
        IChannelConnector connector = new TcpChannelConnector(uri);
        using var clientTls = clientDir is null ? null : MigrationTls.Load(clientDir, TlsEndpoint.Client, hostname);
        if (clientTls is not null)
            connector = new TlsChannelConnector(connector, clientTls, uri.Host);
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2, ChannelTimeoutMs = 5000, SwitchoverTimeoutMs = 5000 }, new MigrationCapabilities());
        MigrationStats? stats = null;
        MigrationException? sourceError = null;
        try
        {
            stats = migration.Run(connector);
        }
        catch (MigrationException e)
        {
            sourceError = e;
        }
        Exception? destinationError = null;
        try
        {
            if (!receive.Wait(TimeSpan.FromSeconds(20)))
                throw new TimeoutException("the destination did not give up");
        }
        catch (AggregateException e)
        {
            destinationError = e.InnerException;
        }
        catch (Exception e)
        {
            destinationError = e;
        }
        return new Outcome(stats, sourceError, destinationError, vm, target);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task A_channel_given_up_is_reset_so_the_peer_does_not_take_it_for_an_exit(bool tls)
    {
        // Postcopy tells a source that exited (an orderly end of stream) from a broken link (a reset) by this. Found
        // in review: a NetworkStream's dispose shut the socket down first, so both ended in an orderly FIN.
        using var certificates = new TestCertificates();
        var credentials = certificates.Directory();
        var tcp = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        using IChannelListener listener = tls ? new TlsChannelListener(tcp, MigrationTls.Load(credentials, TlsEndpoint.Server)) : tcp;
        using var clientTls = MigrationTls.Load(credentials, TlsEndpoint.Client);
        IChannelConnector connector = new TcpChannelConnector(tcp.Uri);
        if (tls)
            connector = new TlsChannelConnector(connector, clientTls, tcp.Uri.Host);
        var accepting = listener.AcceptAsync(CancellationToken.None);
        var client = await connector.ConnectAsync(CancellationToken.None);
        using var server = await accepting;

        ChannelLiveness.Reset(client);

        var buffer = new byte[64];
        await Assert.ThrowsAnyAsync<IOException>(async () =>
        {
            while (await server.ReadAsync(buffer) > 0)
            {
            }
        });
    }

    private static void AssertFailedCleanly(Outcome outcome, string sourceSays, string destinationSays)
    {
        Assert.NotNull(outcome.SourceError);
        Assert.NotNull(outcome.DestinationError);
        Assert.False(outcome.Vm.IsPaused);            // the source runs on
        Assert.False(outcome.Target.Resumed);         // nothing of the guest ran on the destination
        var both = $"source: {outcome.SourceError!.Message} | destination: {outcome.DestinationError!.Message}";
        Assert.True(outcome.SourceError.Message.Contains(sourceSays, StringComparison.Ordinal), both);
        Assert.True(outcome.DestinationError.Message.Contains(destinationSays, StringComparison.Ordinal), both);
        Assert.DoesNotContain("Exception", outcome.SourceError.Message, StringComparison.Ordinal);
        Assert.DoesNotContain("Exception", outcome.DestinationError.Message, StringComparison.Ordinal);
        Assert.DoesNotContain('\n', outcome.SourceError.Message);
    }

    [Fact]
    public void A_migration_over_tls_completes_and_every_page_arrives()
    {
        var dir = _certificates.Directory();
        using var outcome = Migrate(dir, dir);
        Assert.Null(outcome.SourceError);
        Assert.Equal(MigrationStatus.Completed, outcome.Stats!.Status);
        Assert.True(outcome.Target.Resumed);
        PrecopyEngineTests.AssertSameMemory(outcome.Vm, outcome.Target);
    }

    [Fact]
    public void A_proxy_in_the_middle_sees_no_plaintext_page()
    {
        var dir = _certificates.Directory();
        TcpProxy? proxy = null;
        using var outcome = Migrate(dir, dir, proxy: end => proxy = new TcpProxy(end, cutAtResumed: false, capture: true));
        Assert.Null(outcome.SourceError);
        PrecopyEngineTests.AssertSameMemory(outcome.Vm, outcome.Target);
        var captured = proxy!.Captured;
        Assert.True(captured.Length > 1000 * 4096, $"only {captured.Length} bytes passed the proxy");
        // Any 16 bytes of the guest's fill pattern, anywhere in what crossed the wire, would be a leak.
        var page = outcome.Vm.Blocks[0].Mapping.GetSpan(500 * 4096, 4096).ToArray();
        Assert.Equal(-1, captured.AsSpan().IndexOf(page.AsSpan(0, 16)));
        Assert.Equal(-1, captured.AsSpan().IndexOf(page.AsSpan(2048, 16)));
        // And the same proxy does see it in a plain migration: the search would find a leak.
        TcpProxy? plainProxy = null;
        using var plain = Migrate(null, null, proxy: end => plainProxy = new TcpProxy(end, cutAtResumed: false, capture: true));
        var plainPage = plain.Vm.Blocks[0].Mapping.GetSpan(500 * 4096, 4096).ToArray();
        Assert.NotEqual(-1, plainProxy!.Captured.AsSpan().IndexOf(plainPage.AsSpan(0, 16)));
    }

    [Fact]
    public void A_source_certified_by_another_ca_is_refused()
    {
        var server = _certificates.Directory();
        var client = _certificates.Directory(signer: _certificates.OtherCa);
        using var outcome = Migrate(server, client);
        // Both sides name the reason: the destination tells the refused source why, inside TLS.
        AssertFailedCleanly(outcome, "is not trusted by ca-cert.pem (signed by another CA)", "is not trusted by ca-cert.pem (signed by another CA)");
        Assert.Equal(MigrationErrorKind.DestinationRefused, outcome.SourceError!.Kind);
    }

    [Fact]
    public void A_destination_the_source_does_not_trust_is_refused()
    {
        // The destination trusts the right CA for its sources, but its own certificate comes from another one.
        var server = _certificates.Directory(signer: _certificates.OtherCa, trusted: _certificates.Ca);
        var client = _certificates.Directory();
        using var outcome = Migrate(server, client);
        AssertFailedCleanly(outcome, "the destination's certificate 'CN=localhost' is not trusted by ca-cert.pem", "did not accept this destination's certificate");
    }

    [Fact]
    public void An_expired_certificate_is_refused_saying_so()
    {
        var server = _certificates.Directory();
        var client = _certificates.Directory(expired: true);
        using var outcome = Migrate(server, client);
        AssertFailedCleanly(outcome, "expired or not yet valid", "expired or not yet valid");
    }

    [Fact]
    public void A_subject_outside_tls_authz_is_refused()
    {
        var server = _certificates.Directory();
        var client = _certificates.Directory(clientSubject: "CN=intruder.example,O=Elsewhere");
        using var outcome = Migrate(server, client, authz: ["CN=source.example, O=Ferry"]);
        AssertFailedCleanly(outcome, "is not in tls-authz", "subject 'CN=intruder.example, O=Elsewhere' is not in tls-authz");
        using var allowed = Migrate(server, _certificates.Directory(), authz: ["CN=source.example, O=Ferry"]);
        Assert.Null(allowed.SourceError);
    }

    [Fact]
    public void A_wrong_host_name_is_refused()
    {
        var dir = _certificates.Directory();
        using var outcome = Migrate(dir, dir, hostname: "other.example");
        AssertFailedCleanly(outcome, "does not name the host the source expects", "did not accept this destination's certificate");
    }

    [Fact]
    public void A_plain_source_is_refused_by_a_tls_destination_before_any_record()
    {
        using var outcome = Migrate(_certificates.Directory(), clientDir: null);
        AssertFailedCleanly(outcome, "", "TLS");
        Assert.Contains("does not speak TLS", outcome.DestinationError!.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void A_tls_source_against_a_plain_destination_fails_cleanly()
    {
        using var outcome = Migrate(serverDir: null, _certificates.Directory());
        AssertFailedCleanly(outcome, "TLS", "");
    }

    [Fact]
    public void Missing_credentials_are_named()
    {
        var dir = _certificates.Directory();
        File.Delete(Path.Combine(dir, "client-key.pem"));
        var e = Assert.Throws<MigrationTlsException>(() => MigrationTls.Load(dir, TlsEndpoint.Client));
        Assert.Contains("client-key.pem is missing", e.Message, StringComparison.Ordinal);
        e = Assert.Throws<MigrationTlsException>(() => MigrationTls.Load(Path.Combine(dir, "nope"), TlsEndpoint.Server));
        Assert.Contains("is not a directory", e.Message, StringComparison.Ordinal);
        File.WriteAllText(Path.Combine(dir, "server-key.pem"), "not a key");
        e = Assert.Throws<MigrationTlsException>(() => MigrationTls.Load(dir, TlsEndpoint.Server));
        Assert.Contains("cannot load server-cert.pem with server-key.pem", e.Message, StringComparison.Ordinal);
    }
}
