using System.Buffers.Binary;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Ferry.Migration.Tests.Synthetic;
using Ferry.Migration.Transport;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>The DIGEST record of a verified migration: round trip, and every hostile form refused with a named error.</summary>
public sealed class DigestRecordTests
{
    private static readonly BlockDescriptor[] Blocks = [new("ram-low", 64UL << 20), new("ram-high", (16UL << 20) + 8192)];

    /// <summary>A header, then hand-made records with valid checksums and sequence numbers.</summary>
    private static byte[] Stream(params (RecordType Type, byte[] Payload)[] records)
    {
        using var ms = new MemoryStream();
        new RecordWriter(ms).WriteHeader(new StreamHeader((ulong)StreamCapabilities.All, 1, Blocks));
        uint sequence = 0;
        foreach (var (type, payload) in records)
            StreamFormatTests.WriteFrame(ms, type, payload, sequence++);
        return ms.ToArray();
    }

    private static byte[] Digest(ushort block, uint chunk, uint digest, params (ushort First, ushort Length)[] runs) =>
        DigestClaiming(block, chunk, digest, (ushort)runs.Length, runs);

    private static byte[] DigestClaiming(ushort block, uint chunk, uint digest, ushort runCount, params (ushort First, ushort Length)[] runs)
    {
        var p = new byte[12 + runs.Length * 4];
        BinaryPrimitives.WriteUInt16LittleEndian(p, block);
        BinaryPrimitives.WriteUInt16LittleEndian(p.AsSpan(2), runCount);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(4), chunk);
        BinaryPrimitives.WriteUInt32LittleEndian(p.AsSpan(8), digest);
        for (var i = 0; i < runs.Length; i++)
        {
            BinaryPrimitives.WriteUInt16LittleEndian(p.AsSpan(12 + i * 4), runs[i].First);
            BinaryPrimitives.WriteUInt16LittleEndian(p.AsSpan(14 + i * 4), runs[i].Length);
        }
        return p;
    }

    private static List<Ferry.Migration.Stream.Record> ReadAll(byte[] stream) => StreamFormatTests.ReadAll(stream, out _, Blocks);

    [Fact]
    public void A_digest_round_trips_with_its_excluded_pages_as_a_chunk_bitmap()
    {
        using var ms = new MemoryStream();
        var w = new RecordWriter(ms);
        w.WriteHeader(new StreamHeader((ulong)StreamCapabilities.All, 1, Blocks));
        var excluded = new byte[64];
        excluded[0] = 0b0000_0110;   // pages 1, 2
        excluded[63] = 0b1000_0000;  // page 511
        w.WriteDigest(1, 3, 0xDEADBEEF, excluded);
        w.WriteDigest(1, 8, 7, new byte[64]);
        w.WriteEnd();

        var records = ReadAll(ms.ToArray());

        Assert.Equal(RecordType.Digest, records[0].Type);
        Assert.Equal((1, 3L, 0xDEADBEEFu), (records[0].Block, records[0].Chunk, records[0].Digest));
        Assert.Equal(512UL, records[0].PageCount);
        Assert.Equal(excluded, records[0].Data.ToArray());
        Assert.Equal((8L, 7u), (records[1].Chunk, records[1].Digest));
        Assert.Equal(2UL, records[1].PageCount);  // the last chunk of a 16 MiB + 8 KiB block has two pages
        Assert.All(records[1].Data.ToArray(), b => Assert.Equal(0, b));
    }

    [Theory]
    [InlineData("short", "payload of 8 bytes, at least 12 required")]
    [InlineData("runs-missing", "2 excluded runs (at most 256, 4 bytes each) do not fill the 16-byte payload")]
    [InlineData("too-many-runs", "257 excluded runs")]
    [InlineData("bad-block", "block index 5 is outside the 2 blocks")]
    [InlineData("chunk-past-block", "chunk 32 is past the 32 chunks of block 'ram-low'")]
    [InlineData("chunk-wraps", "chunk 4294967295 is past the 9 chunks of block 'ram-high'")]
    [InlineData("duplicate", "a second digest for chunk 4 of block 'ram-low'")]
    [InlineData("run-overlaps", "excluded run 1 (pages 5+3) is empty, not after the previous run's end")]
    [InlineData("run-adjacent", "excluded run 1 (pages 10+1)")]
    [InlineData("run-empty", "excluded run 0 (pages 3+0) is empty")]
    [InlineData("run-past-chunk", "excluded run 0 (pages 510+3) is empty, not after the previous run's end or past the chunk's 512 pages")]
    [InlineData("run-past-short-chunk", "past the chunk's 2 pages")]
    [InlineData("truncated", "stream truncated inside record 0 (Digest)")]
    public void Hostile_digest_records_are_refused_with_a_named_error(string fault, string expected)
    {
        var stream = fault switch
        {
            "short" => Stream((RecordType.Digest, new byte[8])),
            "runs-missing" => Stream((RecordType.Digest, DigestClaiming(0, 1, 0, 2, (3, 1)))),
            "too-many-runs" => Stream((RecordType.Digest, DigestClaiming(0, 1, 0, 257, [.. Enumerable.Range(0, 257).Select(i => ((ushort)(i * 2), (ushort)1))]))),
            "bad-block" => Stream((RecordType.Digest, Digest(5, 0, 0))),
            "chunk-past-block" => Stream((RecordType.Digest, Digest(0, 32, 0))),
            "chunk-wraps" => Stream((RecordType.Digest, Digest(1, uint.MaxValue, 0))),
            "duplicate" => Stream((RecordType.Digest, Digest(0, 4, 1)), (RecordType.Digest, Digest(0, 4, 1))),
            "run-overlaps" => Stream((RecordType.Digest, Digest(0, 0, 0, (2, 4), (5, 3)))),
            "run-adjacent" => Stream((RecordType.Digest, Digest(0, 0, 0, (8, 2), (10, 1)))),
            "run-empty" => Stream((RecordType.Digest, Digest(0, 0, 0, (3, 0)))),
            "run-past-chunk" => Stream((RecordType.Digest, Digest(0, 0, 0, (510, 3)))),
            "run-past-short-chunk" => Stream((RecordType.Digest, Digest(1, 8, 0, (1, 2)))),
            _ => Stream((RecordType.Digest, Digest(0, 0, 0, (1, 1))))[..^2],
        };
        var e = Assert.Throws<StreamFormatException>(() => ReadAll(stream));
        Assert.Contains(expected, e.Message, StringComparison.Ordinal);
    }

    /// <summary>
    /// A hand-made source on in-memory channels: the header with <paramref name="capabilities"/> and
    /// <paramref name="channels"/> channels, a hello on the others, then whatever <paramref name="send"/> writes (one
    /// record writer per channel). Returns the destination's error.
    /// </summary>
    private static MigrationException Receive(StreamCapabilities capabilities, int channels, Action<RecordWriter[]> send)
    {
        var synthetic = new SyntheticVm(4UL << 20);
        using var target = new SyntheticTarget(synthetic.Blocks);
        synthetic.Dispose();
        using var link = new InMemoryChannels();
        var receive = Task.Run(() => MigrationReceiver.Receive(target, link, CancellationToken.None));
        var streams = new System.IO.Stream[channels];
        var writers = new RecordWriter[channels];
        for (var c = 0; c < channels; c++)
        {
            streams[c] = link.ConnectAsync(CancellationToken.None).GetAwaiter().GetResult();
            writers[c] = new RecordWriter(streams[c]);
            if (c == 0)
            {
                writers[0].WriteHeader(new StreamHeader((ulong)capabilities, channels, [.. target.Blocks.Select(b => new BlockDescriptor(b.Name, b.Size))], 42));
                writers[0].Flush();
                Assert.Equal(ReplyType.Accept, ReturnPath.Read(streams[0]).Type);
            }
            else
            {
                streams[c].Write(ChannelHello.Encode(42, c));
            }
        }
        try
        {
            send(writers);
            foreach (var w in writers)
                w.Flush();
        }
        catch (IOException)
        {
            // The destination gave up first.
        }
        var e = Assert.Throws<MigrationException>(() => receive.GetAwaiter().GetResult());
        foreach (var s in streams)
            s.Dispose();
        return e;
    }

    [Fact]
    public void A_digest_without_the_verify_capability_is_refused()
    {
        var e = Receive(StreamCapabilities.All & ~StreamCapabilities.Verify, 1, w => w[0].WriteDigest(0, 0, 0, new byte[64]));
        Assert.Equal(MigrationErrorKind.InvalidStream, e.Kind);
        Assert.Contains("channel 0: a DIGEST record, but verification (capability verify) was not negotiated", e.Message);
    }

    [Fact]
    public void A_digest_on_a_channel_that_does_not_carry_its_chunk_is_refused()
    {
        // Chunk 1 travels on channel 1 of 2.
        var e = Receive(StreamCapabilities.All, 2, w => w[0].WriteDigest(0, 1, 0, new byte[64]));
        Assert.Equal(MigrationErrorKind.InvalidStream, e.Kind);
        Assert.Contains("channel 0: a digest for chunk 1 of block 'ram-low', which travels on channel 1", e.Message);
    }

    [Fact]
    public void A_ram_record_after_the_digests_is_refused()
    {
        var e = Receive(StreamCapabilities.All, 1, w =>
        {
            w[0].WriteDigest(0, 0, ChunkDigestOfNothing(), new byte[64]);
            w[0].WriteZeroRun(0, 0, 1);
        });
        Assert.Contains("channel 0: a ZeroRun record after the channel's digests", e.Message);
    }

    [Fact]
    public void A_digest_that_does_not_match_fails_the_load_as_a_verification_failure()
    {
        var e = Receive(StreamCapabilities.All, 1, w => w[0].WriteDigest(0, 1, 0x12345678, new byte[64]));
        Assert.Equal(MigrationErrorKind.VerifyFailed, e.Kind);
        Assert.Contains($"block 'ram-low' chunk 1 (pages 512..1023, offset 0x200000) differs from the source's (digest 0x{ChunkDigestOfNothing():X8} here, 0x12345678 there)", e.Message);
    }

    private static uint ChunkDigestOfNothing() => Ferry.Migration.Ram.ChunkDigest.OfEmptyChunk(512);
}
