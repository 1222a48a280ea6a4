namespace Ferry.Cli;

/// <summary>
/// Checks a file the command will write (--report, a snapshot file) before any work starts, so a bad path is one
/// line and exit <see cref="ExitCode.Usage"/> with the VM untouched, not a crash after the work is done.
/// </summary>
internal static class OutputPath
{
    /// <returns>The full path.</returns>
    public static string Check(string path, string what)
    {
        string full;
        try
        {
            full = Path.GetFullPath(path);
        }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException)
        {
            throw new UsageException($"{what} '{path}' is not a usable path");
        }
        if (path.Length == 0 || Directory.Exists(full))
            throw new UsageException($"{what} '{path}' is a directory, not a file");
        var directory = Path.GetDirectoryName(full) ?? "/";
        if (!Directory.Exists(directory))
            throw new UsageException($"{what} '{path}': directory {directory} does not exist");
        try
        {
            if (File.Exists(full))
            {
                using (File.Open(full, FileMode.Open, FileAccess.Write))
                {
                }
            }
            else
            {
                using (new FileStream(Path.Combine(directory, $".ferry-check-{Environment.ProcessId}"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.DeleteOnClose))
                {
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new UsageException($"{what} '{path}' cannot be written ({(e is UnauthorizedAccessException ? "permission denied" : e.Message)})");
        }
        return full;
    }
}
