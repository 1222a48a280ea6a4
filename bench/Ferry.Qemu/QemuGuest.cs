using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Machine;

namespace Ferry.Qemu;

/// <summary>How to start QEMU for Ferry's guest.</summary>
public sealed record QemuOptions
{
    public ulong MemoryMib { get; init; } = 512;
    public bool FreePageHint { get; init; } = true;
    public bool FreePageReporting { get; init; }
    public string GuestImage { get; init; } = GuestImageLocator.Locate();
    public string CommandLine { get; init; } = "";
    /// <summary>tcp:HOST:PORT to start as a migration destination.</summary>
    public string? Incoming { get; init; }

    /// <summary>
    /// An x509 credentials directory (ca-cert.pem, server-*.pem, client-*.pem): the process gets a tls-creds-x509
    /// object `ferry-tls` over it, as the server when it is a destination and the client otherwise, peers verified.
    /// </summary>
    public string? TlsCredentials { get; init; }
}

/// <summary>
/// One QEMU process running Ferry's guest: the serial console on its stdin/stdout (as JSON lines through
/// <see cref="GuestConsole"/>), QMP on a Unix socket.
/// </summary>
public sealed class QemuGuest : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    private readonly Process _process;
    private readonly string _qmpPath;
    private readonly Thread _reader;
    private QmpClient? _qmp;

    private QemuGuest(Process process, string qmpPath, GuestConsole console, QemuOptions options)
    {
        Options = options;
        _process = process;
        _qmpPath = qmpPath;
        Console = console;
        console.AttachInput(bytes =>
        {
            _process.StandardInput.BaseStream.Write(bytes);
            _process.StandardInput.BaseStream.Flush();
        });
        _reader = new Thread(() =>
        {
            var buffer = new byte[4096];
            var stdout = _process.StandardOutput.BaseStream;
            int n;
            try
            {
                while ((n = stdout.Read(buffer)) > 0)
                    console.Write(buffer.AsSpan(0, n));
            }
            catch (IOException)
            {
            }
        })
        { IsBackground = true, Name = "qemu-serial" };
        _reader.Start();
    }

    public GuestConsole Console { get; }

    public QemuOptions Options { get; }

    public bool HasExited => _process.HasExited;

    public int ExitCode => _process.ExitCode;

    /// <summary>The QEMU binary: $FERRY_QEMU, or qemu-system-x86_64 on PATH; null when there is none.</summary>
    public static string? Binary()
    {
        var fromEnv = Environment.GetEnvironmentVariable("FERRY_QEMU");
        if (!string.IsNullOrEmpty(fromEnv))
            return File.Exists(fromEnv) ? fromEnv : null;
        foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':'))
        {
            var candidate = Path.Combine(dir, "qemu-system-x86_64");
            if (File.Exists(candidate))
                return candidate;
        }
        return null;
    }

    /// <summary>"7.2.x" etc., from `qemu-system-x86_64 --version`.</summary>
    public static string Version()
    {
        var binary = Binary() ?? throw new InvalidOperationException("QEMU is not installed");
        using var p = Process.Start(new ProcessStartInfo(binary, ["--version"]) { RedirectStandardOutput = true })!;
        var first = p.StandardOutput.ReadLine() ?? "";
        p.WaitForExit();
        var words = first.Split(' ');
        var i = Array.IndexOf(words, "version");
        return i >= 0 && i + 1 < words.Length ? words[i + 1] : first;
    }

    /// <summary>QEMU 10's microvm firmware is slow here; qboot boots the same guest fast.</summary>
    private static string? Qboot()
    {
        const string path = "/usr/share/qemu/qboot.rom";
        return Version().StartsWith('7') || !File.Exists(path) ? null : path;
    }

    public static QemuGuest Start(QemuOptions options)
    {
        var binary = Binary() ?? throw new InvalidOperationException("QEMU is not installed (qemu-system-x86_64 not on PATH)");
        var qmpPath = Path.Combine(Path.GetTempPath(), $"ferry-qemu-{Guid.NewGuid():N}.qmp");
        var args = new List<string>
        {
            "-M", "microvm,x-option-roms=off,pit=off,pic=off,rtc=off,isa-serial=on",
            "-accel", "kvm", "-cpu", "host,-arch-capabilities", "-m", $"{options.MemoryMib}M",
            "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
            "-kernel", options.GuestImage, "-serial", "stdio",
            "-qmp", $"unix:{qmpPath},server=on,wait=off",
            "-global", "virtio-mmio.force-legacy=false",
            "-object", "iothread,id=io0",
            "-device", $"virtio-balloon-device,id=balloon0,iothread=io0,free-page-hint={(options.FreePageHint ? "on" : "off")},free-page-reporting={(options.FreePageReporting ? "on" : "off")}",
            "-device", "isa-debug-exit,iobase=0xf4,iosize=4",
        };
        if (options.CommandLine.Length > 0)
            args.AddRange(["-append", options.CommandLine]);
        if (Qboot() is { } qboot)
            args.AddRange(["-bios", qboot]);
        if (options.Incoming is not null)
            args.AddRange(["-incoming", options.Incoming]);
        if (options.TlsCredentials is not null)
            args.AddRange(["-object", $"tls-creds-x509,id=ferry-tls,dir={options.TlsCredentials},endpoint={(options.Incoming is null ? "client" : "server")},verify-peer=on"]);
        var psi = new ProcessStartInfo(binary, args)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        var process = Process.Start(psi) ?? throw new InvalidOperationException("QEMU did not start");
        process.ErrorDataReceived += (_, e) =>
        {
            if (e.Data is { Length: > 0 })
                System.Console.Error.WriteLine($"qemu: {e.Data}");
        };
        process.BeginErrorReadLine();
        return new QemuGuest(process, qmpPath, new GuestConsole(), options);
    }

    /// <summary>QMP, connected on first use (the socket appears once QEMU has started).</summary>
    public QmpClient Qmp
    {
        get
        {
            if (_qmp is not null)
                return _qmp;
            var deadline = DateTime.UtcNow + Timeout;
            while (true)
            {
                try
                {
                    if (File.Exists(_qmpPath))
                        return _qmp = QmpClient.Connect(_qmpPath);
                }
                catch (IOException) when (DateTime.UtcNow < deadline)
                {
                }
                if (_process.HasExited)
                    throw new InvalidOperationException($"QEMU exited with code {_process.ExitCode} before its QMP socket opened");
                if (DateTime.UtcNow > deadline)
                    throw new TimeoutException("QEMU's QMP socket did not open");
                Thread.Sleep(20);
            }
        }
    }

    public async Task<JsonElement> WaitReadyAsync() => await Console.WaitForEventAsync("ready", Timeout).ConfigureAwait(false);

    public async Task<JsonElement> Cmd(string command)
    {
        var reply = await Console.CommandAsync(command, Timeout).ConfigureAwait(false);
        if (!reply.GetProperty("ok").GetBoolean())
            throw new InvalidOperationException($"guest command '{command}' failed under QEMU: {reply}");
        return reply;
    }

    /// <summary>Sets the balloon so the guest has <paramref name="guestBytes"/> and waits until QEMU reports it.</summary>
    public async Task BalloonTo(ulong guestBytes)
    {
        Qmp.Execute("balloon", new JsonObject { ["value"] = guestBytes });
        // QEMU keeps the target in whole pages: num_pages = (ram - value) >> 12, and reports ram - actual pages.
        var ram = Options.MemoryMib << 20;
        var expected = ram - (ram - guestBytes) / 4096 * 4096;
        var deadline = DateTime.UtcNow + Timeout;
        while (Qmp.Execute("query-balloon")!["actual"]!.GetValue<ulong>() != expected)
        {
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"QEMU's balloon did not reach a guest size of {guestBytes} bytes");
            await Task.Delay(20).ConfigureAwait(false);
        }
    }

    public void Dispose()
    {
        _qmp?.Dispose();
        try
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }
        }
        catch (InvalidOperationException)
        {
        }
        _process.Dispose();
        try
        {
            File.Delete(_qmpPath);
        }
        catch (IOException)
        {
        }
    }
}
