namespace Ferry.Fuzz;

/// <summary>
/// Every harness: one function from arbitrary bytes to "handled". Each catches the typed exceptions its code under
/// test documents for bad input; anything else escapes, and afl (or the corpus replay test) records a crash.
/// </summary>
public static class Targets
{
    public static readonly IReadOnlyDictionary<string, Action<byte[]>> All = new Dictionary<string, Action<byte[]>>(StringComparer.Ordinal)
    {
        ["stream"] = StreamTarget.Run,
        ["snapshot"] = SnapshotTarget.Run,
        ["qmp"] = QmpTarget.Run,
        ["virtio"] = VirtioTarget.Run,
        ["elf"] = ElfTarget.Run,
    };
}
