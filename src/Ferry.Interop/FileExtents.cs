using System.Runtime.InteropServices;

namespace Ferry.Interop;

/// <summary>
/// The byte ranges of [start, end) of a file that hold data, in order, found with SEEK_DATA/SEEK_HOLE: the one
/// walker for "where is data" in a memfd, a snapshot file or any sparse file. Everything between two extents is
/// a hole. Extents are exact (clipped to the range), not rounded: callers that think in pages round themselves.
/// Allocation-free: <c>foreach (var (offset, length) in FileExtents.Data(file, start, end))</c>.
/// </summary>
public readonly struct FileExtents
{
    /// <summary>The walk at its start: each <see cref="GetEnumerator"/> walks from there on a copy.</summary>
    private readonly Enumerator _start;

    private FileExtents(Enumerator start) => _start = start;

    /// <summary>The data extents of [<paramref name="start"/>, <paramref name="end"/>) of <paramref name="file"/>.</summary>
    public static FileExtents Data(SafeHandle file, long start, long end)
    {
        ArgumentNullException.ThrowIfNull(file);
        ArgumentOutOfRangeException.ThrowIfNegative(start);
        ArgumentOutOfRangeException.ThrowIfLessThan(end, start);
        return new FileExtents(new Enumerator(file, start, end));
    }

    public Enumerator GetEnumerator() => _start;

    public struct Enumerator
    {
        private readonly SafeHandle _file;
        private readonly long _end;
        private long _position;

        internal Enumerator(SafeHandle file, long start, long end)
        {
            _file = file;
            _position = start;
            _end = end;
            Current = default;
        }

        public (long Offset, long Length) Current { get; private set; }

        public bool MoveNext()
        {
            if (_position >= _end)
                return false;
            // A reference per step, not per walk: the descriptor cannot be closed and reused under the two lseeks,
            // and an enumerator that is copied or never disposed cannot leak or double-release one.
            var added = false;
            try
            {
                _file.DangerousAddRef(ref added);
                var fd = (int)_file.DangerousGetHandle();
                var data = Libc.Lseek(fd, _position, Libc.SEEK_DATA);
                if (data < 0)
                {
                    if (Libc.LastErrno != Libc.ENXIO)
                        ErrnoException.ThrowLast("lseek(SEEK_DATA)");
                    _position = _end; // ENXIO: no data at or after the position
                    return false;
                }
                if (data >= _end)
                {
                    _position = _end;
                    return false;
                }
                // Every file ends in an implicit hole, so SEEK_HOLE after data always answers.
                var hole = ErrnoException.Check(Libc.Lseek(fd, data, Libc.SEEK_HOLE), "lseek(SEEK_HOLE)");
                var stop = Math.Min(hole, _end);
                Current = (data, stop - data);
                _position = stop;
                return true;
            }
            finally
            {
                if (added)
                    _file.DangerousRelease();
            }
        }
    }
}
