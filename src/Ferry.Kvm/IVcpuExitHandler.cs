namespace Ferry.Kvm;

/// <summary>
/// Handles the exits that need the VMM's devices. Called on the vCPU's own thread: keep it allocation-free.
/// </summary>
public interface IVcpuExitHandler
{
    /// <summary>
    /// Port I/O. <paramref name="data"/> is the kvm_run data area: <paramref name="size"/> bytes per access,
    /// <c>data.Length / size</c> accesses (string I/O). For reads, fill it in.
    /// </summary>
    void HandleIo(Vcpu vcpu, ushort port, int size, bool isWrite, Span<byte> data);

    /// <summary>An access to a guest-physical address with no RAM behind it. For reads, fill <paramref name="data"/>.</summary>
    void HandleMmio(Vcpu vcpu, ulong address, bool isWrite, Span<byte> data);
}

/// <summary>Why a vCPU stopped running guest code for good.</summary>
public sealed record VcpuFault(int Vcpu, string Reason, string Detail)
{
    public override string ToString() => $"vCPU {Vcpu}: {Reason}: {Detail}";
}
