using System.ComponentModel;
using System.Diagnostics;

namespace Ferry.Migration.Transport;

/// <summary>
/// `exec:COMMAND` on the source: the command is run (`/bin/sh -c COMMAND`) when the migration opens its channel;
/// the stream goes to its stdin and the destination's replies come from its stdout. One command is one channel:
/// a second connect is refused (QEMU refuses multifd over exec: the same way, before starting).
/// </summary>
public sealed class ExecChannelConnector(MigrationUri uri) : IChannelConnector
{
    private readonly MigrationUri _uri = uri.Expect(MigrationUriKind.Exec);
    private int _connected;

    public string Description => _uri.ToString();

    public Task<System.IO.Stream> ConnectAsync(CancellationToken cancel)
    {
        if (Interlocked.Increment(ref _connected) > 1)
            throw new IOException($"{_uri} carries one migration channel only");
        return Task.FromResult<System.IO.Stream>(ExecChannelStream.Start(_uri));
    }
}

/// <summary>
/// `exec:COMMAND` on the destination: the command is run as soon as the listener is made (QEMU runs it at
/// migrate-incoming); its stdout is the stream and the replies go to its stdin. The first accept returns it; a
/// source asking for a second channel is refused.
/// </summary>
public sealed class ExecChannelListener : IChannelListener
{
    private readonly MigrationUri _uri;
    private ExecChannelStream? _stream;

    public ExecChannelListener(MigrationUri uri)
    {
        _uri = uri.Expect(MigrationUriKind.Exec);
        _stream = ExecChannelStream.Start(uri);
    }

    public string Description => _uri.ToString();

    public Task<System.IO.Stream> AcceptAsync(CancellationToken cancel)
    {
        var stream = Interlocked.Exchange(ref _stream, null)
            ?? throw new IOException($"{_uri} carries one migration channel only, and the source asked for more");
        return Task.FromResult<System.IO.Stream>(stream);
    }

    /// <summary>Ends the command if no one took its stream (taken streams belong to their taker).</summary>
    public void Dispose() => Interlocked.Exchange(ref _stream, null)?.Dispose();
}

/// <summary>
/// A command's stdin (written) and stdout (read) as one duplex stream; its stderr is the VMM's. A command that
/// ends with a failure status is named in the error of the read or write that finds it gone, so a mistyped
/// command says so instead of "connection lost".
/// </summary>
internal sealed class ExecChannelStream : System.IO.Stream, IShutdownStream
{
    /// <summary>How long a command whose stdin was closed may take to finish before it is killed.</summary>
    private static readonly TimeSpan Grace = TimeSpan.FromSeconds(2);

    private readonly Process _process;
    private readonly MigrationUri _uri;
    private readonly System.IO.Stream _stdin;
    private readonly System.IO.Stream _stdout;
    private int _inputClosed;
    private int _disposed;

    private ExecChannelStream(Process process, MigrationUri uri)
    {
        _process = process;
        _uri = uri;
        _stdin = process.StandardInput.BaseStream;
        _stdout = process.StandardOutput.BaseStream;
    }

    public static ExecChannelStream Start(MigrationUri uri)
    {
        var start = new ProcessStartInfo("/bin/sh")
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("-c");
        start.ArgumentList.Add(uri.Command);
        try
        {
            var process = Process.Start(start) ?? throw new IOException($"cannot run {uri}");
            return new ExecChannelStream(process, uri);
        }
        catch (Win32Exception e)
        {
            throw new IOException($"cannot run {uri}: {e.Message}", e);
        }
    }

    public override bool CanRead => true;
    public override bool CanWrite => true;
    public override bool CanSeek => false;
    public override long Length => throw new NotSupportedException();
    public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }

    public override int Read(byte[] buffer, int offset, int count) => Read(buffer.AsSpan(offset, count));

    public override int Read(Span<byte> buffer)
    {
        int n;
        try
        {
            n = _stdout.Read(buffer);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw Failed(e);
        }
        if (n == 0 && buffer.Length > 0 && ExitedWithFailure(TimeSpan.FromMilliseconds(500)) is { } failure)
            throw new IOException(failure);
        return n;
    }

    public override void Write(byte[] buffer, int offset, int count) => Write(buffer.AsSpan(offset, count));

    public override void Write(ReadOnlySpan<byte> buffer)
    {
        try
        {
            _stdin.Write(buffer);
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw Failed(e);
        }
    }

    public override void Flush()
    {
        try
        {
            _stdin.Flush();
        }
        catch (Exception e) when (e is IOException or ObjectDisposedException)
        {
            throw Failed(e);
        }
    }

    public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();

    public override void SetLength(long value) => throw new NotSupportedException();

    /// <summary>
    /// Closes the command's stdin (it reads the end of the stream after what was written, as a socket's peer reads
    /// FIN) and kills it if it has not finished within the grace time, which ends its stdout for any reader.
    /// </summary>
    public void Shutdown()
    {
        CloseInput();
        _ = Task.Delay(Grace).ContinueWith(_ => Kill(), TaskScheduler.Default);
    }

    private IOException Failed(Exception e) =>
        ExitedWithFailure(TimeSpan.FromMilliseconds(500)) is { } failure ? new IOException(failure, e) : new IOException($"{_uri}: {e.Message}", e);

    /// <summary>The reason to give when the command has ended (within <paramref name="wait"/>) with a failure status; null otherwise.</summary>
    private string? ExitedWithFailure(TimeSpan wait)
    {
        try
        {
            if (!_process.WaitForExit(wait) || _process.ExitCode == 0)
                return null;
            return _process.ExitCode > 128
                ? $"the command of {_uri} was killed by signal {_process.ExitCode - 128}"
                : $"the command of {_uri} exited with status {_process.ExitCode}";
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }

    private void CloseInput()
    {
        if (Interlocked.Exchange(ref _inputClosed, 1) != 0)
            return;
        try
        {
            _stdin.Dispose();
        }
        catch (IOException)
        {
            // The command is gone already (EPIPE on the last flush): nothing more to tell it.
        }
    }

    private void Kill()
    {
        try
        {
            if (!_process.HasExited)
                _process.Kill(entireProcessTree: true);
        }
        catch (Exception e) when (e is InvalidOperationException or Win32Exception or NotSupportedException)
        {
            // Exited meanwhile, or already disposed.
        }
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing && Interlocked.Exchange(ref _disposed, 1) == 0)
        {
            CloseInput();
            // Killed before its stdout is closed: a thread blocked reading it then sees the end of the stream
            // (closing an fd does not wake a read blocked on it).
            if (!_process.WaitForExit(Grace))
                Kill();
            _process.WaitForExit(Grace);
            _stdout.Dispose();
            _process.Dispose();
        }
        base.Dispose(disposing);
    }
}
