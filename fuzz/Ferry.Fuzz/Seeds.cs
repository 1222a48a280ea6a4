using System.Buffers.Binary;
using System.Text;
using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.Migration.Engine;
using Ferry.Migration.Snapshot;
using Ferry.Migration.Stream;

namespace Ferry.Fuzz;

/// <summary>Small valid inputs for every target (fuzz/corpus/TARGET/seed-*), regenerated with <c>Ferry.Fuzz seeds DIR</c>.</summary>
public static class Seeds
{
    public static IEnumerable<(string Target, string Name, byte[] Bytes)> All()
    {
        var stream = RecordStream(header: true);
        yield return ("stream", "seed-records", [0x00, .. stream]);
        yield return ("stream", "seed-records-repair", [0x01, .. stream]);
        yield return ("stream", "seed-records-land-repair", [0x09, .. stream]);
        yield return ("stream", "seed-channel-repair", [0x03, .. ChannelHello.Encode(StreamTarget.SessionId, 2), .. RecordStream(header: false)]);
        yield return ("stream", "seed-replies-repair", [0x05, .. Replies()]);

        var snapshot = Snapshot();
        foreach (var (mode, name) in new (byte, string)[] { (0x00, "eager"), (0x01, "eager-repair"), (0x03, "lazy-repair"), (0x09, "dirty-repair"), (0x11, "threads-repair"), (0x05, "missing-block-repair") })
            yield return ("snapshot", $"seed-{name}", [mode, .. snapshot]);

        yield return ("qmp", "seed-settings", Encoding.UTF8.GetBytes(QmpSettings()));
        yield return ("qmp", "seed-errors", Encoding.UTF8.GetBytes(
            "{\"execute\":\"query-commands\"}\r\n{\"execute\":\"qmp_capabilities\",\"id\":\"a\"}\n{\"execute\":\"qmp_capabilities\"}\n" +
            "{\"execute\":\"nope\",\"id\":[1,{\"x\":null}]}\n[1,2]\n{\"execute\":1}\n{\"execute\":\"migrate-set-parameters\",\"arguments\":[]}\n" +
            "{\"execute\":\"migrate-set-parameters\",\"arguments\":{\"max-bandwidth\":-1,\"bogus\":1}}\n{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[{\"capability\":\"multifd\"}]}}\n{\"exec\n"));

        yield return ("virtio", "seed-inflate-deflate", VirtioInflateDeflate());
        yield return ("virtio", "seed-chains-and-host", VirtioChainsAndHost());

        yield return ("elf", "seed-exec", Elf(bss: false, extraHeader: false));
        yield return ("elf", "seed-exec-bss-note", Elf(bss: true, extraHeader: true));
    }

    public static void Write(string directory)
    {
        foreach (var (target, name, bytes) in All())
        {
            Directory.CreateDirectory(Path.Combine(directory, target));
            File.WriteAllBytes(Path.Combine(directory, target, name), bytes);
        }
    }

    private static byte[] RecordStream(bool header)
    {
        using var output = new MemoryStream();
        var writer = new RecordWriter(output);
        if (header)
            writer.WriteHeader(new StreamHeader((ulong)StreamCapabilities.All, StreamTarget.Channels, StreamTarget.Blocks, StreamTarget.SessionId));
        var page = new byte[Page.Size];
        page.AsSpan(0, 16).Fill(0xAB);
        writer.WritePages(0, 4 * (ulong)Page.Size, page);
        writer.WriteZeroRun(1, 0, 8);
        var bitmap = new byte[8];
        bitmap[0] = 0x81;
        writer.WriteBalloonBitmap(0, 0, bitmap);
        writer.WriteState(StateKind.Device, 0, "virtio-balloon", [1, 2, 3, 4]);
        writer.WritePassEnd(1);
        var excluded = new byte[8];
        excluded[0] = 0b0000_0110;
        excluded[1] = 0b0000_0100;
        writer.WriteDigest(0, 0, 0x1234_5678, excluded);
        writer.WriteDigest(1, 0, 0x9ABC_DEF0, new byte[2]);
        writer.WriteEnd();
        writer.Flush();
        return output.ToArray();
    }

    private static byte[] Replies()
    {
        using var output = new MemoryStream();
        ReturnPath.WriteAccept(output, (ulong)StreamCapabilities.All);
        ReturnPath.WritePassLoaded(output, 1);
        ReturnPath.WriteFailed(output, "no");
        ReturnPath.WriteResumed(output);
        return output.ToArray();
    }

    /// <summary>
    /// A compact valid snapshot: header, block table, bitmaps, page checksums and two state sections in the first
    /// KiB, page areas at 1 MiB and 2 MiB (holes, so the present pages are zero pages and their checksums are the
    /// zero page's: the harness extends the input to the header's file length).
    /// </summary>
    public static byte[] Snapshot()
    {
        var blocks = new (string Name, ulong Pages, byte Present, byte Ballooned, ulong PagesOffset)[] { ("ram-low", 16, 0x23, 0x80, 1 << 20), ("ram-high", 8, 0x01, 0x02, 2 << 20) };
        var file = new byte[1024];
        const int table = 128, bitmaps = 448, checksums = 512, state = 640;
        var s = file.AsSpan();
        var zeroPageCrc = Crc32C.Compute(new byte[Page.Size]);
        for (var b = 0; b < blocks.Length; b++)
        {
            var sums = (ulong)(checksums + b * 64);
            new BlockEntry(blocks[b].Name, blocks[b].Pages * (ulong)Page.Size, (ulong)(bitmaps + b * 32), (ulong)(bitmaps + b * 32 + 16), 8, blocks[b].PagesOffset, 0, 0, sums)
                .Encode(s.Slice(table + b * SnapshotFormat.BlockEntrySize, SnapshotFormat.BlockEntrySize));
            s[bitmaps + b * 32] = blocks[b].Present;
            s[bitmaps + b * 32 + 16] = blocks[b].Ballooned;
            for (var page = 0; page < (int)blocks[b].Pages; page++)
                BinaryPrimitives.WriteUInt32LittleEndian(s[((int)sums + page * 4)..], zeroPageCrc);
        }
        StateSection[] sections = [new(StateKind.Vcpu, 0, "vcpu0", [1, 2, 3, 4, 5, 6, 7, 8]), new(StateKind.Device, 0, "virtio-balloon", [9, 9])];
        var area = SnapshotWriter.EncodeState(sections);
        area.CopyTo(s[state..]);
        var position = state + area.Length;
        new SnapshotHeader((uint)blocks.Length, table, (ulong)blocks.Length * SnapshotFormat.BlockEntrySize, state, (ulong)(position - state),
            (uint)sections.Length, (2UL << 20) + 8 * (ulong)Page.Size).Encode(s);
        var result = file[..position];
        SnapshotTarget.Repair(result); // bitmap checksums, the completion mark
        return result;
    }

    private static string QmpSettings()
    {
        var text = new StringBuilder("{\"execute\":\"qmp_capabilities\"}\n{\"execute\":\"query-migrate-parameters\",\"id\":1}\n");
        text.Append("{\"execute\":\"migrate-set-parameters\",\"arguments\":{");
        text.AppendJoin(',', MigrationParameterTable.All.Select(p => $"\"{p.Name}\":{p.Max}"));
        text.Append("}}\n{\"execute\":\"migrate-set-capabilities\",\"arguments\":{\"capabilities\":[");
        text.AppendJoin(',', MigrationCapabilityTable.All.Select(c => $"{{\"capability\":\"{c.Name}\",\"state\":false}}"));
        text.Append("]}}\n{\"execute\":\"query-migrate-capabilities\"}\n{\"execute\":\"query-commands\",\"id\":\"x\"}\n");
        return text.ToString();
    }

    /// <summary>Builds a <see cref="VirtioTarget"/> program.</summary>
    private sealed class Program
    {
        private readonly List<byte> _bytes = [];

        public byte[] Bytes => [.. _bytes];

        public Program Op(int op) { _bytes.Add((byte)op); return this; }
        public Program U8(int v) { _bytes.Add((byte)v); return this; }
        public Program U16(int v) { _bytes.AddRange(BitConverter.GetBytes((ushort)v)); return this; }
        public Program U32(uint v) { _bytes.AddRange(BitConverter.GetBytes(v)); return this; }
        public Program U64(ulong v) { _bytes.AddRange(BitConverter.GetBytes(v)); return this; }
        public Program Raw(ReadOnlySpan<byte> v) { _bytes.AddRange(v.ToArray()); return this; }

        public Program Negotiate(ulong features, int queueMask, int size) => Op(3).U64(features).U8(queueMask).U16(size);

        /// <summary>A descriptor whose address is BufferBase + 4 * slot.</summary>
        public Program Descriptor(int q, int index, int slot, uint length, int flags, int next) =>
            Op(4).U8(q).U8(index).U8(0).U16(slot).U32(length).U16(flags).U16(next);

        public Program Publish(int q, int head) => Op(5).U8(q).U16(head);

        public Program Kick(int q) => Op(7).U8(q);

        public Program Buffer(int slot, ReadOnlySpan<byte> bytes) => Op(8).U8(0).U16(slot).U8(bytes.Length).Raw(bytes);
    }

    private static readonly ulong AllFeatures = (1UL << 32) | 0x3F | (1UL << 62) | (1UL << 63);

    private static byte[] Pfns(params uint[] pfns) => [.. pfns.SelectMany(BitConverter.GetBytes)];

    private static byte[] VirtioInflateDeflate()
    {
        var p = new Program().Negotiate(AllFeatures & ~(3UL << 62), 0x3F, 16);
        p.Buffer(0, Pfns(300, 301, 302, 5000, 0x10_0000));
        p.Descriptor(0, 0, 0, 20, 0, 0).Publish(0, 0).Kick(0);
        p.Buffer(64, Pfns(301, 302));
        p.Descriptor(1, 0, 64, 8, 0, 0).Publish(1, 0).Kick(1);
        p.Op(0).U32(0x3).U8(0x64 / 4); // InterruptACK
        p.Op(2).U16(0x60).U8(3);      // InterruptStatus read
        p.Op(2).U16(0x104).U8(3);     // config: actual
        p.Op(0).U32(12).U8(0x104 / 4); // config write: actual = 12 pages
        return p.Bytes;
    }

    private static byte[] VirtioChainsAndHost()
    {
        var p = new Program().Negotiate(AllFeatures, 0x3F, 8);
        // Page bitmap message (FERRY_F_PAGE_BITMAP) on the inflate queue: header then one 8-byte bitmap word.
        var message = new byte[BalloonBitmapMessage.HeaderSize + 8];
        BinaryPrimitives.WriteUInt16LittleEndian(message.AsSpan(2), Page.Shift);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(16), 256);
        BinaryPrimitives.WriteUInt64LittleEndian(message.AsSpan(24), 8);
        message[32] = 0xF0;
        p.Buffer(0, message);
        p.Descriptor(0, 0, 0, 16, 1, 1).Descriptor(0, 1, 4, (uint)message.Length - 16, 0, 0).Publish(0, 0).Kick(0);
        // Stats: a chain with one readable buffer of two (tag, value) pairs.
        p.Buffer(128, [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 16, 0, 0, 0, 0, 0, 0]);
        p.Descriptor(2, 0, 128, 20, 0, 0).Publish(2, 0).Kick(2);
        // Free page reporting: one writable buffer of 16 KiB at 1 MiB.
        p.Op(4).U8(4).U8(0).U8(1).U32(0x10_0000).U32(0x4000).U16(2).U16(0).Publish(4, 0).Kick(4);
        // A looping chain and a head past the queue.
        p.Descriptor(1, 0, 0, 8, 1, 0).Publish(1, 0).Publish(1, 200).Kick(1);
        // Host: target, hint run start/stop/finish, status; state round trip; hostile state.
        p.Op(9).U8(0).U32(64).Op(9).U8(1).U32(0).Op(9).U8(2).U32(0).Op(9).U8(3).U32(0).Op(9).U8(4).U32(0);
        p.Op(10).Op(11).U8(4).Raw([1, 0, 0, 0]);
        return p.Bytes;
    }

    /// <summary>A tiny x86-64 executable: ELF header, program headers, a few bytes of code at 0x100000.</summary>
    private static byte[] Elf(bool bss, bool extraHeader)
    {
        var phnum = 1 + (bss ? 1 : 0) + (extraHeader ? 1 : 0);
        var codeOffset = 64 + 56 * phnum;
        var file = new byte[codeOffset + 16];
        var s = file.AsSpan();
        s[0] = 0x7F; s[1] = (byte)'E'; s[2] = (byte)'L'; s[3] = (byte)'F'; s[4] = 2; s[5] = 1; s[6] = 1;
        BinaryPrimitives.WriteUInt16LittleEndian(s[16..], 2);
        BinaryPrimitives.WriteUInt16LittleEndian(s[18..], 62);
        BinaryPrimitives.WriteUInt32LittleEndian(s[20..], 1);
        BinaryPrimitives.WriteUInt64LittleEndian(s[24..], 0x10_0000);
        BinaryPrimitives.WriteUInt64LittleEndian(s[32..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(s[52..], 64);
        BinaryPrimitives.WriteUInt16LittleEndian(s[54..], 56);
        BinaryPrimitives.WriteUInt16LittleEndian(s[56..], (ushort)phnum);
        void Ph(int i, uint type, uint flags, ulong offset, ulong address, ulong fileSize, ulong memorySize)
        {
            var ph = file.AsSpan(64 + 56 * i, 56);
            BinaryPrimitives.WriteUInt32LittleEndian(ph, type);
            BinaryPrimitives.WriteUInt32LittleEndian(ph[4..], flags);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[8..], offset);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[16..], address);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[24..], address);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[32..], fileSize);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[40..], memorySize);
            BinaryPrimitives.WriteUInt64LittleEndian(ph[48..], 0x1000);
        }
        Ph(0, 1, 5, (ulong)codeOffset, 0x10_0000, 16, 16);
        if (bss)
            Ph(1, 1, 6, (ulong)codeOffset + 8, 0x20_0000, 8, 0x3000);
        if (extraHeader)
            Ph(phnum - 1, 4, 4, 0, 0, 0, 0);
        s[codeOffset] = 0xEB; // jmp $
        s[codeOffset + 1] = 0xFE;
        return file;
    }
}
