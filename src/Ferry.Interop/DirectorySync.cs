namespace Ferry.Interop;

/// <summary>fsync of a directory: makes a rename or a new entry in it durable (the file's own fsync does not).</summary>
public static class DirectorySync
{
    public static void Sync(string directory)
    {
        using var fd = SafeFd.FromResult(Libc.Open(directory, Libc.O_RDONLY | Libc.O_DIRECTORY | Libc.O_CLOEXEC, 0), $"open({directory})");
        ErrnoException.Check(Libc.Fsync(fd.Fd), $"fsync({directory})");
    }
}
