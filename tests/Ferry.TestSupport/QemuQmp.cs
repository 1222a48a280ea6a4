using System.Diagnostics;
using Xunit;

namespace Ferry.TestSupport;

/// <summary>
/// QEMU's own Python QMP client (qemu.qmp, QEMU 7.2, unmodified) for conformance tests. It is never committed:
/// `shared/clients/qemu-qmp/get-qemu-qmp.sh` fetches it into the ignored artifacts/qemu-qmp once, on first use.
/// Where python3 or the download is unavailable, <see cref="UnavailableReason"/> says why and the tests skip.
/// </summary>
public static class QemuQmp
{
    private static readonly Lazy<(string? Library, string? Reason)> Setup = new(Prepare);

    /// <summary>The repository's root (the directory holding Ferry.sln).</summary>
    public static string RepoRoot { get; } = FindRepoRoot();

    /// <summary>The directory to put on PYTHONPATH, or null.</summary>
    public static string? Library => Setup.Value.Library;

    public static string? UnavailableReason => Setup.Value.Reason;

    /// <summary>Runs <c>python3 script args</c> with qemu.qmp importable; returns its exit code and its output (stdout then stderr).</summary>
    public static (int ExitCode, string Output) RunPython(string script, TimeSpan timeout, params string[] args) =>
        Run("python3", [script, .. args], timeout, Library ?? throw new InvalidOperationException(UnavailableReason));

    private static (string?, string?) Prepare()
    {
        var library = Path.Combine(RepoRoot, "artifacts", "qemu-qmp");
        var script = Path.GetFullPath(Path.Combine(RepoRoot, "..", "shared", "clients", "qemu-qmp", "get-qemu-qmp.sh"));
        try
        {
            var (code, output) = Run("python3", ["--version"], TimeSpan.FromSeconds(30));
            if (code != 0)
                return (null, $"python3 does not run: {output.Trim()}");
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (null, $"python3 is not installed ({e.Message})");
        }
        if (!File.Exists(Path.Combine(library, "qemu", "qmp", "qmp_client.py")))
        {
            if (!File.Exists(script))
                return (null, $"qemu.qmp is not in {library} and {script} (which fetches it) does not exist");
            var (code, output) = Run("bash", [script, library], TimeSpan.FromMinutes(5));
            if (code != 0)
                return (null, $"fetching qemu.qmp failed ({script} exited {code}): {output.Trim()}");
        }
        return (library, null);
    }

    private static (int, string) Run(string file, string[] args, TimeSpan timeout, string? pythonPath = null)
    {
        var psi = new ProcessStartInfo(file, args) { RedirectStandardOutput = true, RedirectStandardError = true };
        if (pythonPath is not null)
            psi.Environment["PYTHONPATH"] = pythonPath;
        using var p = Process.Start(psi)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEndAsync();
        if (!p.WaitForExit(timeout))
        {
            p.Kill(entireProcessTree: true);
            return (-1, $"{file} {string.Join(' ', args)} did not exit within {timeout.TotalSeconds} s\n{stdout.Result}{stderr.Result}");
        }
        return (p.ExitCode, stdout.Result + stderr.Result);
    }

    private static string FindRepoRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Ferry.sln")))
            dir = dir.Parent;
        return dir?.FullName ?? throw new InvalidOperationException($"no Ferry.sln above {AppContext.BaseDirectory}");
    }
}

/// <summary>A test that runs QEMU's Python QMP client; skipped with the reason where python3 or qemu.qmp is unavailable.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class QemuQmpFactAttribute : FactAttribute
{
    public QemuQmpFactAttribute()
    {
        if (QemuQmp.UnavailableReason is { } reason)
            Skip = $"needs QEMU's qemu.qmp client: {reason}";
    }
}

/// <summary>A test that needs both KVM and qemu.qmp; skipped with the first reason that applies.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class KvmQemuQmpFactAttribute : FactAttribute
{
    public KvmQemuQmpFactAttribute()
    {
        if (Ferry.Kvm.KvmSystem.UnavailableReason() is { } kvm)
            Skip = $"needs KVM: {kvm}";
        else if (QemuQmp.UnavailableReason is { } reason)
            Skip = $"needs QEMU's qemu.qmp client: {reason}";
    }
}
