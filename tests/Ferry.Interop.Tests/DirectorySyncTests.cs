using Xunit;

namespace Ferry.Interop.Tests;

public sealed class DirectorySyncTests
{
    [Fact]
    public void An_existing_directory_syncs_and_a_missing_one_is_an_error_naming_it()
    {
        var directory = Directory.CreateTempSubdirectory("ferry-dirsync-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(directory, "a"), "x");
            DirectorySync.Sync(directory);
            var missing = Path.Combine(directory, "missing");
            var error = Assert.Throws<ErrnoException>(() => DirectorySync.Sync(missing));
            Assert.Equal(Libc.ENOENT, error.Errno);
            Assert.Contains(missing, error.Message, StringComparison.Ordinal);
            var notDirectory = Assert.Throws<ErrnoException>(() => DirectorySync.Sync(Path.Combine(directory, "a")));
            Assert.Equal(20, notDirectory.Errno); // ENOTDIR: O_DIRECTORY refuses a plain file
        }
        finally
        {
            Directory.Delete(directory, recursive: true);
        }
    }
}
