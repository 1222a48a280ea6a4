using System.Diagnostics;
using System.Globalization;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;
using Ferry.TestSupport;

/// <summary>
/// What TLS costs a migration (issue 17), without KVM: a paused machine of G GiB of pseudo-random data (nothing
/// compresses, nothing is zero) migrated over loopback TCP with N channels, plain and with TLS (credentials made
/// here, TLS 1.3, mutual authentication), alternating in one run; medians of --repeat. The end-to-end KVM figures
/// (a guest dirtying memory, QEMU with tls-creds beside it) are bench/migrate.sh's.
/// </summary>
internal static class TlsBench
{
    /// <param name="warmDestination">
    /// One destination for every run, written once before them, instead of fresh memory each run: the host's first
    /// allocation of memory varies from run to run on these machines (they are VMs whose own host takes free memory
    /// back), which hides the wire and crypto costs this compares.
    /// </param>
    public static int Run(ulong gib, int channels, int repeat, RamBackend backend, bool warmDestination)
    {
        var c = CultureInfo.InvariantCulture;
        var size = gib << 30;
        Console.WriteLine(string.Create(c, $"TLS cost: {gib} GiB of random pages, paused source, loopback TCP, {channels} channels, {backend} memory on both sides, {(warmDestination ? "one warm destination" : "a fresh destination each run")}, {Environment.ProcessorCount} cores, median of {repeat}"));
        using var certificates = new TestCertificates();
        var credentials = certificates.Directory();
        using var source = new PausedMemory(size, backend);
        using var warm = warmDestination ? new DiscardingTarget(source.Blocks, touch: true) : null;
        var plain = new List<double>();
        var tls = new List<double>();
        for (var i = 0; i < repeat; i++)
        {
            plain.Add(Once(source, channels, null, warm));
            tls.Add(Once(source, channels, credentials, warm));
        }
        double Median(List<double> runs) => runs.Order().ElementAt(runs.Count / 2);
        double Rate(double ms) => gib / (ms / 1000);
        var p = Median(plain);
        var t = Median(tls);
        Console.WriteLine(string.Create(c, $"| | time | rate |\n|---|---|---|\n| plain TCP (baseline) | {p:F0} ms | {Rate(p):F2} GiB/s |\n| TLS 1.3 | {t:F0} ms | {Rate(t):F2} GiB/s |\n| TLS / plain | {t / p:F2}x | |"));
        return 0;
    }

    private static double Once(PausedMemory source, int channels, string? credentials, DiscardingTarget? warm)
    {
        using var fresh = warm is null ? new DiscardingTarget(source.Blocks) : null;
        var target = warm ?? fresh!;
        var tcp = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
        using IChannelListener listener = credentials is null ? tcp : new TlsChannelListener(tcp, MigrationTls.Load(credentials, TlsEndpoint.Server));
        var uri = tcp.Uri;
        var receive = Task.Run(() => MigrationReceiver.Receive(target, listener, CancellationToken.None));
        using var clientTls = credentials is null ? null : MigrationTls.Load(credentials, TlsEndpoint.Client);
        IChannelConnector connector = new TcpChannelConnector(uri);
        if (clientTls is not null)
            connector = new TlsChannelConnector(connector, clientTls, uri.Host);
        using var migration = new PrecopyMigration(source, new MigrationParameters { MultifdChannels = channels }, new MigrationCapabilities());
        var clock = Stopwatch.StartNew();
        migration.Run(connector);
        receive.GetAwaiter().GetResult();
        return clock.Elapsed.TotalMilliseconds;
    }

    /// <summary>A paused machine whose one RAM block is full of random bytes.</summary>
    private sealed class PausedMemory : IMigrationSource, IDisposable
    {
        private readonly RamBlock[] _blocks;

        public PausedMemory(ulong size, RamBackend backend)
        {
            _blocks = [RamBlock.Create("ram-low", 0, size, 0, backend)];
            var chunk = new byte[Page.ChunkSize];
            for (ulong offset = 0; offset < size; offset += (ulong)chunk.Length)
            {
                Random.Shared.NextBytes(chunk);
                chunk.CopyTo(_blocks[0].Mapping.GetSpan(offset, chunk.Length));
            }
        }

        public IReadOnlyList<RamBlock> Blocks => _blocks;
        public bool IsPaused => true;
        public IMigrationBalloon? Balloon => null;
        public void SetDirtyLogging(bool enabled) { }
        public void SyncDirtyLog(int block, PageSet into) { }
        public void PauseGuest() { }
        public void ResumeGuest() { }
        public void SetThrottle(int percent) { }
        public IReadOnlyList<StateSection> SaveState() => [new StateSection(StateKind.Machine, 0, "bench", [1])];
        public void Dispose() => _blocks[0].Dispose();
    }

    /// <summary>A destination with RAM like the source's (<paramref name="touch"/>: every page written once, so it is allocated).</summary>
    private sealed class DiscardingTarget : IMigrationTarget, IDisposable
    {
        private readonly RamBlock[] _blocks;

        public DiscardingTarget(IReadOnlyList<RamBlock> like, bool touch = false)
        {
            _blocks = [.. like.Select(b => RamBlock.Create(b.Name, b.GuestPhysicalAddress, b.Size, b.Slot, b.Backend))];
            if (!touch)
                return;
            var ones = new byte[Page.ChunkSize];
            ones.AsSpan().Fill(1);
            foreach (var block in _blocks)
            {
                for (ulong offset = 0; offset < block.Size; offset += Page.ChunkSize)
                    block.WriteAt(offset, ones.AsSpan(0, (int)Math.Min(Page.ChunkSize, block.Size - offset)));
            }
        }

        public IReadOnlyList<RamBlock> Blocks => _blocks;
        public void ApplyBalloonBitmap(int block, ulong firstPage, ReadOnlySpan<byte> bitmap) { }
        public void RestoreState(IReadOnlyList<StateSection> sections) { }
        public void ResumeGuest() { }

        public void Dispose()
        {
            foreach (var b in _blocks)
                b.Dispose();
        }
    }
}
