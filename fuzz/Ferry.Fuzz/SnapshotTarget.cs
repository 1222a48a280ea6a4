using System.Buffers.Binary;
using Ferry.Kvm;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;

namespace Ferry.Fuzz;

/// <summary>
/// A snapshot file as <c>ferry snapshot inspect</c> and a restore read it: <see cref="SnapshotFile.Open"/> (header,
/// completion mark, block table, bitmaps, state sections), <see cref="SnapshotFile.Inspect"/>, then, when its blocks
/// are small, a load into synthetic (memfd) RAM blocks, eager (<see cref="SnapshotFile.LoadInto"/>) or lazy
/// (<see cref="SnapshotFile.MapInto"/>), checked page by page against the file. Byte 0 is the mode: bit 0 = repair
/// every checksum and the completion mark first; bit 1 = lazy load; bit 2 = give the load one block too few;
/// bit 3 = dirty the RAM first (so absent pages must be discarded); bit 4 = two load threads. The rest is the file;
/// when its header's file length is larger (up to 64 MiB) the file is extended with a hole, so a seed stays a few
/// KiB although page areas start at 1 MiB.
/// </summary>
public static class SnapshotTarget
{
    private const ulong MaxSparseLength = 64UL << 20;
    private const ulong MaxLoadBytes = 2UL << 20;

    [ThreadStatic]
    private static string? t_path;

    public static void Run(byte[] input)
    {
        if (input.Length == 0)
            return;
        var mode = input[0];
        var data = input[1..];
        if ((mode & 1) != 0)
            Repair(data);
        var path = t_path ??= Path.Combine(Directory.Exists("/dev/shm") ? "/dev/shm" : Path.GetTempPath(), $"ferry-fuzz-{Environment.ProcessId}-{Environment.CurrentManagedThreadId}.snap");
        File.WriteAllBytes(path, data);
        var declared = data.Length >= 72 ? BinaryPrimitives.ReadUInt64LittleEndian(data.AsSpan(64)) : 0;
        if (declared > (ulong)data.Length && declared <= MaxSparseLength)
        {
            using var extend = File.OpenHandle(path, FileMode.Open, FileAccess.ReadWrite);
            RandomAccess.SetLength(extend, (long)declared);
        }
        try
        {
            using var snapshot = SnapshotFile.Open(path);
            var inspection = snapshot.Inspect();
            _ = inspection.Format();
            foreach (var block in snapshot.Blocks)
            {
                if (block.PresentPages + block.BalloonedPages + block.AbsentPages != block.PageCount)
                    throw new FuzzOracleException($"block '{block.Name}': page classes do not add up");
            }
            if (snapshot.Blocks.Count <= 4 && snapshot.Blocks.Sum(b => (decimal)b.Size) <= MaxLoadBytes)
                Load(snapshot, data, mode);
        }
        catch (SnapshotFormatException e) when (e.InnerException is null or IOException or Ferry.Interop.ErrnoException)
        {
        }
    }

    private static void Load(SnapshotFile snapshot, byte[] file, byte mode)
    {
        var blocks = snapshot.Blocks.Select((b, i) => RamBlock.Create(b.Name, (ulong)i << 32, b.Size, i)).ToList();
        try
        {
            if ((mode & 8) != 0)
            {
                foreach (var block in blocks)
                    block.WriteAt(0, new byte[Math.Min(block.Size, 3 * (ulong)Page.Size)].AsSpan().Fill2(0x5A));
            }
            var given = (mode & 4) != 0 ? blocks.Skip(1).ToList() : blocks;
            var result = (mode & 2) != 0 ? snapshot.MapInto(given, (mode & 16) != 0 ? 2 : 1) : snapshot.LoadInto(given, (mode & 16) != 0 ? 2 : 1);
            if ((mode & 4) != 0)
                throw new FuzzOracleException("a load into a VM missing one of the snapshot's blocks was accepted");
            if (result.State.Count != snapshot.State.Count)
                throw new FuzzOracleException("the load returned other state sections than the file holds");
            for (var b = 0; b < blocks.Count; b++)
            {
                var entry = snapshot.Blocks[b];
                var ram = blocks[b].Mapping.GetSpan(0, (int)blocks[b].Size);
                for (ulong page = 0; page < entry.PageCount; page++)
                {
                    var got = ram.Slice((int)(page * (ulong)Page.Size), Page.Size);
                    var at = entry.PagesOffset + page * (ulong)Page.Size;
                    var expected = entry.IsPresent(page) && at < (ulong)file.Length
                        ? file.AsSpan((int)at, (int)Math.Min((ulong)Page.Size, (ulong)file.Length - at))
                        : [];
                    if (!got[..expected.Length].SequenceEqual(expected) || got[expected.Length..].ContainsAnyExcept((byte)0))
                        throw new FuzzOracleException($"block '{entry.Name}' page {page} does not hold what the file says after the load");
                }
            }
        }
        finally
        {
            foreach (var block in blocks)
                block.Dispose();
        }
    }

    private static Span<byte> Fill2(this Span<byte> span, byte value)
    {
        span.Fill(value);
        return span;
    }

    /// <summary>Rewrites the header checksum, completion mark, block entry, bitmap and state checksums.</summary>
    public static void Repair(byte[] file)
    {
        if (file.Length < SnapshotFormat.HeaderSize)
            return;
        var header = file.AsSpan(0, SnapshotFormat.HeaderSize);
        var blockCount = BinaryPrimitives.ReadUInt32LittleEndian(header[20..]);
        var tableOffset = BinaryPrimitives.ReadUInt64LittleEndian(header[24..]);
        for (ulong b = 0; b < Math.Min(blockCount, (uint)SnapshotFormat.MaxBlocks); b++)
        {
            var at = tableOffset + b * SnapshotFormat.BlockEntrySize;
            if (at > (ulong)file.Length || (ulong)file.Length - at < SnapshotFormat.BlockEntrySize)
                break;
            var entry = file.AsSpan((int)at, SnapshotFormat.BlockEntrySize);
            var bitmapLength = BinaryPrimitives.ReadUInt64LittleEndian(entry[96..]);
            BinaryPrimitives.WriteUInt32LittleEndian(entry[112..], Crc(file, BinaryPrimitives.ReadUInt64LittleEndian(entry[80..]), bitmapLength));
            BinaryPrimitives.WriteUInt32LittleEndian(entry[116..], Crc(file, BinaryPrimitives.ReadUInt64LittleEndian(entry[88..]), bitmapLength));
            BinaryPrimitives.WriteUInt32LittleEndian(entry[SnapshotFormat.BlockEntryCrcOffset..], Crc32C.Compute(entry[..SnapshotFormat.BlockEntryCrcOffset]));
        }
        var stateOffset = BinaryPrimitives.ReadUInt64LittleEndian(header[40..]);
        var stateLength = BinaryPrimitives.ReadUInt64LittleEndian(header[48..]);
        var stateCount = BinaryPrimitives.ReadUInt32LittleEndian(header[56..]);
        var position = stateOffset;
        var stateEnd = Math.Min(stateOffset + Math.Min(stateLength, (ulong)file.Length), (ulong)file.Length);
        for (uint i = 0; i < stateCount && position < stateEnd && stateEnd - position >= SnapshotFormat.StateSectionHeaderSize; i++)
        {
            var section = file.AsSpan((int)position, (int)(stateEnd - position));
            var size = SnapshotFormat.StateSectionHeaderSize + (ulong)BinaryPrimitives.ReadUInt16LittleEndian(section[4..]) + BinaryPrimitives.ReadUInt32LittleEndian(section[8..]);
            if (size > (ulong)section.Length)
                break;
            var crc = Crc32C.Append(Crc32C.Compute(section[..12]), section[SnapshotFormat.StateSectionHeaderSize..(int)size]);
            BinaryPrimitives.WriteUInt32LittleEndian(section[12..], crc);
            position += size;
        }
        var headerCrc = Crc32C.Compute(header[..SnapshotFormat.HeaderCrcOffset]);
        BinaryPrimitives.WriteUInt32LittleEndian(header[SnapshotFormat.HeaderCrcOffset..], headerCrc);
        var mark = header.Slice(SnapshotFormat.CompletionMarkOffset, SnapshotFormat.CompletionMarkSize);
        SnapshotFormat.CompletionMagic.CopyTo(mark);
        BinaryPrimitives.WriteUInt32LittleEndian(mark[8..], headerCrc);
        BinaryPrimitives.WriteUInt32LittleEndian(mark[12..], Crc32C.Compute(mark[..12]));
    }

    /// <summary>CRC32C of [offset, +length) of the file as read: the input, then the hole that extends it.</summary>
    private static uint Crc(byte[] file, ulong offset, ulong length)
    {
        if (length > 1UL << 20)
            return 0;
        var crc = 0u;
        if (offset < (ulong)file.Length)
        {
            var n = Math.Min(length, (ulong)file.Length - offset);
            crc = Crc32C.Compute(file.AsSpan((int)offset, (int)n));
            length -= n;
        }
        Span<byte> zeros = stackalloc byte[4096];
        zeros.Clear();
        while (length > 0)
        {
            var n = (int)Math.Min(length, 4096UL);
            crc = Crc32C.Append(crc, zeros[..n]);
            length -= (ulong)n;
        }
        return crc;
    }
}
