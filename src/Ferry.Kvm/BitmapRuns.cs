namespace Ferry.Kvm;

/// <summary>Runs of set bits in a little-endian page bitmap (byte i/8, bit i%8), as the balloon and the stream carry them.</summary>
public static class BitmapRuns
{
    /// <summary>Calls <paramref name="run"/>(first page, page count) for each run of consecutive set bits; bit 0 is <paramref name="firstPage"/>.</summary>
    public static void ForEach(ReadOnlySpan<byte> bitmap, ulong firstPage, Action<ulong, ulong> run)
    {
        ulong runStart = 0, runLength = 0;
        for (var byteIndex = 0; byteIndex < bitmap.Length; byteIndex++)
        {
            var b = bitmap[byteIndex];
            if (b == 0 && runLength == 0)
                continue;
            for (var bit = 0; bit < 8; bit++)
            {
                var page = firstPage + (ulong)byteIndex * 8 + (ulong)bit;
                if ((b & (1 << bit)) != 0)
                {
                    if (runLength == 0)
                        runStart = page;
                    runLength++;
                }
                else if (runLength != 0)
                {
                    run(runStart, runLength);
                    runLength = 0;
                }
            }
        }
        if (runLength != 0)
            run(runStart, runLength);
    }
}
