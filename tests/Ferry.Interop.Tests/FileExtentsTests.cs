using Microsoft.Win32.SafeHandles;
using Xunit;

namespace Ferry.Interop.Tests;

/// <summary>
/// The one SEEK_DATA/SEEK_HOLE walker, on real sparse files in the temp directory (a filesystem with holes and
/// 4 KiB blocks, so data written in whole pages comes back as exactly those pages).
/// </summary>
public sealed class FileExtentsTests : IDisposable
{
    private const long Page = 4096;
    private readonly string _path = Path.Combine(Path.GetTempPath(), $"ferry-extents-{Guid.NewGuid():N}.bin");

    public void Dispose() => File.Delete(_path);

    /// <summary>A file of <paramref name="length"/> bytes, all hole except <paramref name="data"/> (offset, length).</summary>
    private SafeFileHandle SparseFile(long length, params (long Offset, long Length)[] data)
    {
        var file = File.OpenHandle(_path, FileMode.CreateNew, FileAccess.ReadWrite);
        foreach (var (offset, count) in data)
            RandomAccess.Write(file, Enumerable.Repeat((byte)0x5A, (int)count).ToArray(), offset);
        RandomAccess.SetLength(file, length);
        return file;
    }

    private static (long, long)[] Walk(SafeFileHandle file, long start, long end)
    {
        var extents = new List<(long, long)>();
        foreach (var extent in FileExtents.Data(file, start, end))
            extents.Add(extent);
        return [.. extents];
    }

    [Fact]
    public void Extents_are_exactly_the_pages_written_in_order()
    {
        using var file = SparseFile(16 * Page, (10 * Page, 3 * Page), (0, 2 * Page), (5 * Page, Page));
        Assert.Equal([(0L, 2 * Page), (5 * Page, Page), (10 * Page, 3 * Page)], Walk(file, 0, 16 * Page));
    }

    [Fact]
    public void An_empty_file_and_an_all_hole_file_have_no_extents()
    {
        using var file = SparseFile(0);
        Assert.Empty(Walk(file, 0, 0));
        Assert.Empty(Walk(file, 0, 16 * Page)); // a range past the end: ENXIO ends the walk
        RandomAccess.SetLength(file, 64 * Page);
        Assert.Empty(Walk(file, 0, 64 * Page));
    }

    [Fact]
    public void Data_at_the_very_end_is_found_and_ends_at_the_end_of_the_file()
    {
        using var file = SparseFile(7 * Page + 100, (7 * Page, 100));
        Assert.Equal([(7 * Page, 100L)], Walk(file, 0, 7 * Page + 100));
        Assert.Equal([(7 * Page, 100L)], Walk(file, 0, 100 * Page)); // the end of the range may lie past the file's
    }

    [Fact]
    public void A_range_inside_the_file_clips_the_extents_to_it()
    {
        using var file = SparseFile(16 * Page, (0, 2 * Page), (5 * Page, Page), (10 * Page, 3 * Page));
        Assert.Equal([(5 * Page + 100, Page - 100), (10 * Page, Page)], Walk(file, 5 * Page + 100, 11 * Page));
        Assert.Equal([(Page, Page)], Walk(file, Page, 3 * Page));
        Assert.Empty(Walk(file, 2 * Page, 5 * Page));   // a hole between extents
        Assert.Empty(Walk(file, 11 * Page, 11 * Page)); // an empty range inside data
    }

    [Fact]
    public void Bad_ranges_are_refused_and_a_closed_handle_is_not_used()
    {
        var file = SparseFile(Page, (0, Page));
        Assert.Throws<ArgumentOutOfRangeException>(() => FileExtents.Data(file, -1, Page));
        Assert.Throws<ArgumentOutOfRangeException>(() => FileExtents.Data(file, 2 * Page, Page));
        var extents = FileExtents.Data(file, 0, Page);
        file.Dispose();
        Assert.Throws<ObjectDisposedException>(() => Walk(file, 0, Page));
        Assert.Throws<ObjectDisposedException>(() => extents.GetEnumerator().MoveNext());
    }
}
