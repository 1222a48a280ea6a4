using Ferry.Migration.Engine;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>
/// The migration engine over every channel transport a URI can name, without KVM: synthetic memory with a guest
/// writing throughout, the real receiver, and the channels that <see cref="MigrationTransports"/> makes from a parsed
/// URI (unix: sockets, an exec: command built from sh and cat).
/// </summary>
public sealed class TransportTests : IDisposable
{
    private const ulong MiB = 1UL << 20;
    private readonly string _dir = Directory.CreateTempSubdirectory("ferry-transport-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private static SyntheticVm WritingVm()
    {
        var vm = new SyntheticVm(32 * MiB, 8 * MiB);
        vm.Fill(0, 0, 3000, 1);
        vm.Fill(1, 100, 50, 1);
        vm.WorkingSet = (500, 800);
        vm.PagesPerSecond = 20_000;
        vm.Start();
        return vm;
    }

    private static (MigrationStats Stats, IncomingReport Report) Migrate(SyntheticVm vm, SyntheticTarget target, MigrationUri listen, MigrationUri connect, MigrationParameters parameters)
    {
        using var listener = MigrationTransports.Listen(listen);
        var receive = Task.Run(() => MigrationReceiver.Receive(target, listener, CancellationToken.None));
        using var migration = new PrecopyMigration(vm, parameters, new MigrationCapabilities());
        MigrationStats stats;
        try
        {
            stats = migration.Run(MigrationTransports.Connect(connect));
        }
        catch (MigrationException e) when (receive.IsFaulted)
        {
            throw new MigrationException($"{e.Message} (destination: {receive.Exception!.InnerException!.Message})", e);
        }
        return (stats, receive.GetAwaiter().GetResult());
    }

    [Fact]
    public void Unix_sockets_carry_several_channels_and_the_guest_arrives_as_it_was_when_paused()
    {
        using var vm = WritingVm();
        using var target = new SyntheticTarget(vm.Blocks);
        var uri = MigrationUri.Parse($"unix:{Path.Combine(_dir, "m.sock")}");

        var (stats, report) = Migrate(vm, target, uri, uri, new MigrationParameters { MultifdChannels = 3 });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(3, report.Channels);
        Assert.True(target.Resumed);
        Assert.Equal(vm.Generation, BitConverter.ToInt64(target.State![0].Blob));
        PrecopyEngineTests.AssertSameMemory(vm, target);
        Assert.False(File.Exists(uri.Path), "the listener left its socket file behind");
    }

    [Fact]
    public void An_exec_command_on_each_side_carries_the_one_channel_both_ways()
    {
        // Two FIFOs and cat make the pipe QEMU users build with ssh or nc: the source's command sends its stdin
        // into one and the other into its stdout; the destination's does the reverse. fd 3 keeps the command's
        // stdin for the background cat (a background job's own stdin is /dev/null).
        var toDestination = Path.Combine(_dir, "to-destination");
        var toSource = Path.Combine(_dir, "to-source");
        MakeFifo(toDestination);
        MakeFifo(toSource);
        using var vm = WritingVm();
        using var target = new SyntheticTarget(vm.Blocks);

        var (stats, report) = Migrate(vm, target,
            MigrationUri.Parse($"exec:exec 3<&0; cat <&3 > '{toSource}' & exec cat < '{toDestination}'"),
            MigrationUri.Parse($"exec:exec 3<&0; cat <&3 > '{toDestination}' & exec cat < '{toSource}'"),
            new MigrationParameters { MultifdChannels = 1 });

        Assert.Equal(MigrationStatus.Completed, stats.Status);
        Assert.Equal(1, report.Channels);
        Assert.True(target.Resumed);
        Assert.Equal(vm.Generation, BitConverter.ToInt64(target.State![0].Blob));
        PrecopyEngineTests.AssertSameMemory(vm, target);
    }

    [Fact]
    public void A_failing_exec_command_is_named_with_its_status_and_the_source_runs_on()
    {
        using var vm = WritingVm();
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 1 }, new MigrationCapabilities());

        var error = Assert.Throws<MigrationException>(() => migration.Run(MigrationTransports.Connect(MigrationUri.Parse("exec:exit 3"))));

        Assert.Contains("the command of exec:exit 3 exited with status 3", error.Message, StringComparison.Ordinal);
        Assert.False(vm.IsPaused);
    }

    [Fact]
    public async Task Exec_carries_one_channel_only_on_either_side()
    {
        var connector = MigrationTransports.Connect(MigrationUri.Parse("exec:cat"));
        await using (var first = await connector.ConnectAsync(CancellationToken.None))
        {
            var second = await Assert.ThrowsAsync<IOException>(() => connector.ConnectAsync(CancellationToken.None));
            Assert.Equal("exec:cat carries one migration channel only", second.Message);
        }
        using var listener = MigrationTransports.Listen(MigrationUri.Parse("exec:cat"));
        await using (await listener.AcceptAsync(CancellationToken.None))
        {
            var more = await Assert.ThrowsAsync<IOException>(() => listener.AcceptAsync(CancellationToken.None));
            Assert.Equal("exec:cat carries one migration channel only, and the source asked for more", more.Message);
        }
    }

    [Fact]
    public async Task An_exec_stream_echoes_through_cat_and_shutdown_ends_the_readers_wait()
    {
        var connector = MigrationTransports.Connect(MigrationUri.Parse("exec:cat"));
        await using var stream = await connector.ConnectAsync(CancellationToken.None);
        stream.Write("hello"u8);
        stream.Flush();
        var buffer = new byte[5];
        stream.ReadExactly(buffer);
        Assert.Equal("hello"u8.ToArray(), buffer);
        var reader = Task.Run(() => stream.Read(new byte[1]));
        ChannelLiveness.Wake(stream);
        Assert.Equal(0, await reader.WaitAsync(TimeSpan.FromSeconds(10)));
    }

    [Fact]
    public void A_unix_listener_replaces_a_stale_socket_but_not_a_file_a_directory_or_a_live_socket()
    {
        var path = Path.Combine(_dir, "stale.sock");
        using (var gone = new System.Net.Sockets.Socket(System.Net.Sockets.AddressFamily.Unix, System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Unspecified))
            gone.Bind(new System.Net.Sockets.UnixDomainSocketEndPoint(path)); // closed without unlinking: a stale socket file
        using (MigrationTransports.Listen(MigrationUri.Unix(path)))
        {
            Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(path));
            var busy = Assert.Throws<IOException>(() => MigrationTransports.Listen(MigrationUri.Unix(path)));
            Assert.Equal($"cannot listen on {path}: another process is listening on it", busy.Message);
        }
        Assert.False(File.Exists(path), "the listener left its socket file behind");

        var file = Path.Combine(_dir, "notes.txt");
        File.WriteAllText(file, "keep me");
        Assert.Equal($"cannot listen on {file}: it exists and is not a socket (not replacing it)",
            Assert.Throws<IOException>(() => MigrationTransports.Listen(MigrationUri.Unix(file))).Message);
        Assert.Equal("keep me", File.ReadAllText(file));
        Assert.StartsWith($"cannot listen on {_dir}: ", Assert.Throws<IOException>(() => MigrationTransports.Listen(MigrationUri.Unix(_dir))).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void Connecting_to_a_unix_path_nobody_listens_on_names_the_uri()
    {
        using var vm = WritingVm();
        using var migration = new PrecopyMigration(vm, new MigrationParameters { MultifdChannels = 2 }, new MigrationCapabilities());
        var uri = MigrationUri.Unix(Path.Combine(_dir, "nobody.sock"));

        var error = Assert.Throws<MigrationException>(() => migration.Run(MigrationTransports.Connect(uri)));

        Assert.Contains($"cannot connect to {uri}", error.Message, StringComparison.Ordinal);
        Assert.False(vm.IsPaused);
    }

    [Theory]
    [InlineData("tcp:h:1", false, true, 4, null)]
    [InlineData("unix:/s", false, true, 4, null)]
    [InlineData("exec:cat", false, false, 4, null)]
    [InlineData("exec:cat", false, true, 1, null)]
    [InlineData("exec:cat", false, true, 4, "Migration requires multi-channel URIs (e.g. tcp): exec:cat carries one channel and multifd asks for 4; set multifd-channels to 1 or turn the multifd capability off")]
    [InlineData("file:/f", true, true, 4, null)]
    [InlineData("file:/f", false, false, 1, "file:/f needs the mapped-ram capability: Ferry writes a file only as the fixed-offset snapshot file")]
    [InlineData("tcp:h:1", true, true, 4, "Migration requires seekable transport (e.g. file): the mapped-ram capability is on and tcp:h:1 is not a file: URI")]
    public void Outgoing_settings_are_checked_against_the_transport_as_qemu_does(string uri, bool mappedRam, bool multifd, int channels, string? expected) =>
        Assert.Equal(expected, MigrationTransports.CheckOutgoing(MigrationUri.Parse(uri),
            new MigrationParameters { MultifdChannels = channels }, new MigrationCapabilities { MappedRam = mappedRam, Multifd = multifd }));

    [Theory]
    [InlineData("exec:cat", false, null)]
    [InlineData("file:/f", true, null)]
    [InlineData("file:/f", false, "file:/f needs the mapped-ram capability: Ferry reads a file only as the fixed-offset snapshot file")]
    [InlineData("unix:/s", true, "Migration requires seekable transport (e.g. file): the mapped-ram capability is on and unix:/s is not a file: URI")]
    public void Incoming_capabilities_are_checked_against_the_transport(string uri, bool mappedRam, string? expected) =>
        Assert.Equal(expected, MigrationTransports.CheckIncoming(MigrationUri.Parse(uri), new MigrationCapabilities { MappedRam = mappedRam }));

    private static void MakeFifo(string path)
    {
        using var mkfifo = System.Diagnostics.Process.Start("mkfifo", [path]);
        mkfifo.WaitForExit();
        Assert.Equal(0, mkfifo.ExitCode);
    }
}
