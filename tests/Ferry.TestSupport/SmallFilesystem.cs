using System.Diagnostics;
using Xunit;

namespace Ferry.TestSupport;

/// <summary>
/// A tmpfs of a few MiB mounted for one test, to see what Ferry does when a filesystem fills up. Mounting needs
/// root (CI and these machines run as root); elsewhere the test is skipped with the reason.
/// </summary>
public sealed class SmallFilesystem : IDisposable
{
    private SmallFilesystem(string path) => Path = path;

    public string Path { get; }

    /// <summary>Why a small tmpfs cannot be mounted here, or null when it can.</summary>
    public static string? UnavailableReason()
    {
        try
        {
            using var probe = Mount(1);
            return null;
        }
        catch (InvalidOperationException e)
        {
            return e.Message;
        }
    }

    public static SmallFilesystem Mount(int megabytes)
    {
        var path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"ferry-tinyfs-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        var (code, error) = Run("mount", "-t", "tmpfs", "-o", $"size={megabytes}m", "tmpfs", path);
        if (code != 0)
        {
            Directory.Delete(path);
            throw new InvalidOperationException($"cannot mount a {megabytes} MiB tmpfs (needs root): {error.Trim()}");
        }
        return new SmallFilesystem(path);
    }

    public void Dispose()
    {
        Run("umount", "-l", Path);
        try
        {
            Directory.Delete(Path);
        }
        catch (IOException)
        {
            // Still busy: the lazy unmount finishes on its own; the empty directory stays in /tmp.
        }
    }

    private static (int Code, string Error) Run(string program, params string[] args)
    {
        try
        {
            using var process = Process.Start(new ProcessStartInfo(program, args) { RedirectStandardError = true, RedirectStandardOutput = true })!;
            var error = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, error);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            return (-1, e.Message);
        }
    }
}

/// <summary>A test that mounts a small tmpfs; skipped with the reason where that is not allowed.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class SmallFilesystemFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Reason = new(SmallFilesystem.UnavailableReason);

    public SmallFilesystemFactAttribute()
    {
        if (Reason.Value is { } reason)
            Skip = $"needs a small tmpfs: {reason}";
    }
}
