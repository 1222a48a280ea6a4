using System.Runtime.InteropServices;
using Ferry.Interop.Kvm;

namespace Ferry.Kvm;

/// <summary>
/// <see cref="VcpuState"/> as bytes, for the migration stream's STATE records and for snapshot files. Decoding
/// treats the bytes as hostile: every length is checked before use.
/// </summary>
public static class VcpuStateCodec
{
    private const uint Version = 1;
    private const int MaxMsrs = 1024;
    private const int MaxXsave = 1 << 20;

    public static byte[] Encode(VcpuState s) => new StateWriter()
        .U32(Version).U32((uint)s.Index).U32(s.TscKhz)
        .Raw(s.MpState).Raw(s.Regs).Raw(s.Sregs).Raw(s.Xcrs).Raw(s.DebugRegs).Raw(s.Events)
        .U32((uint)s.Xsave.Length).Bytes(s.Xsave)
        .U32((uint)s.Msrs.Length).Bytes(MemoryMarshal.AsBytes(s.Msrs.AsSpan()))
        .ToArray();

    public static VcpuState Decode(ReadOnlySpan<byte> data)
    {
        var reader = new StateReader(data, "vCPU state");
        var version = reader.U32();
        if (version != Version)
            throw new InvalidDataException($"vCPU state version {version} is not {Version}");
        var index = reader.U32();
        var tsc = reader.U32();
        var mp = reader.Raw<KvmMpState>();
        var regs = reader.Raw<KvmRegs>();
        var sregs = reader.Raw<KvmSregs>();
        var xcrs = reader.Raw<KvmXcrs>();
        var debug = reader.Raw<KvmDebugRegs>();
        var events = reader.Raw<KvmVcpuEvents>();
        var xsaveLength = reader.U32();
        if (xsaveLength < 4096 || xsaveLength > MaxXsave)
            throw new InvalidDataException($"vCPU state: XSAVE area of {xsaveLength} bytes is outside 4096..{MaxXsave}");
        var xsave = reader.Bytes((int)xsaveLength).ToArray();
        var msrCount = reader.U32();
        if (msrCount > MaxMsrs)
            throw new InvalidDataException($"vCPU state: {msrCount} MSRs is over {MaxMsrs}");
        var msrs = MemoryMarshal.Cast<byte, KvmMsrEntry>(reader.Bytes((int)msrCount * Marshal.SizeOf<KvmMsrEntry>())).ToArray();
        reader.End();
        if (index > 1024)
            throw new InvalidDataException($"vCPU state: index {index} is out of range");
        return new VcpuState
        {
            Index = (int)index, TscKhz = tsc, MpState = mp, Regs = regs, Sregs = sregs, Xcrs = xcrs,
            DebugRegs = debug, Events = events, Xsave = xsave, Msrs = msrs,
        };
    }
}
