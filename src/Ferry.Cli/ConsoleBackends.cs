using System.Net.Sockets;
using Ferry.Devices.Legacy;
using Ferry.Interop;

namespace Ferry.Cli;

/// <summary>Where `ferry run` connects the guest's serial console: stdio or a Unix socket.</summary>
internal abstract class ConsoleBackend : ISerialOutput, IDisposable
{
    public abstract void Write(ReadOnlySpan<byte> data);

    /// <summary>Starts feeding host input into the guest's UART.</summary>
    public abstract void Start(Serial16550 serial);

    public virtual void Dispose() { }

    public static ConsoleBackend Create(string spec, UnixFileMode socketMode = UnixListener.PrivateMode) => spec switch
    {
        "stdio" => new StdioConsole(),
        _ when spec.StartsWith("unix:", StringComparison.Ordinal) && spec.Length > 5 => new UnixSocketConsole(spec[5..], socketMode),
        _ => throw new UsageException($"--console '{spec}' is not stdio or unix:PATH"),
    };
}

/// <summary>Guest output to stdout (flushed at each newline), stdin to the guest.</summary>
internal sealed class StdioConsole : ConsoleBackend
{
    private readonly Stream _stdout = Console.OpenStandardOutput();
    private readonly Lock _lock = new();

    public override void Write(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            _stdout.Write(data);
            if (data.Contains((byte)'\n'))
                _stdout.Flush();
        }
    }

    public override void Start(Serial16550 serial)
    {
        var thread = new Thread(() =>
        {
            using var stdin = Console.OpenStandardInput();
            var buffer = new byte[4096];
            int n;
            while ((n = stdin.Read(buffer)) > 0)
                serial.EnqueueInput(buffer.AsSpan(0, n));
        })
        { IsBackground = true, Name = "console-stdin" };
        thread.Start();
    }
}

/// <summary>The console on a Unix socket: one client at a time; output while nobody is connected is dropped.</summary>
internal sealed class UnixSocketConsole : ConsoleBackend
{
    private readonly string _path;
    private readonly Socket _listener;
    private readonly Lock _lock = new();
    private Socket? _client;

    public UnixSocketConsole(string path, UnixFileMode mode)
    {
        _path = path;
        try
        {
            _listener = UnixListener.Listen(path, mode, backlog: 1);
        }
        catch (IOException e)
        {
            throw new UsageException($"--console unix:{path}: {e.Message}");
        }
    }

    public override void Write(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            try
            {
                _client?.Send(data);
            }
            catch (SocketException)
            {
                _client = null;
            }
        }
    }

    public override void Start(Serial16550 serial)
    {
        var thread = new Thread(() =>
        {
            var buffer = new byte[4096];
            while (true)
            {
                Socket client;
                try
                {
                    client = _listener.Accept();
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return;
                }
                // A client that stops reading must not block the vCPU thread writing guest output: sends give up
                // after 200 ms and the client is dropped.
                client.SendTimeout = 200;
                lock (_lock)
                    _client = client;
                try
                {
                    int n;
                    while ((n = client.Receive(buffer)) > 0)
                        serial.EnqueueInput(buffer.AsSpan(0, n));
                }
                catch (SocketException)
                {
                }
                lock (_lock)
                    _client = null;
                client.Dispose();
            }
        })
        { IsBackground = true, Name = "console-socket" };
        thread.Start();
    }

    public override void Dispose()
    {
        _listener.Dispose();
        try
        {
            File.Delete(_path);
        }
        catch (IOException)
        {
        }
        base.Dispose();
    }
}
