using Ferry.Kvm;
using Xunit;

namespace Ferry.Qemu.Tests;

/// <summary>A test that needs QEMU and /dev/kvm; skipped, with the reason, where either is missing.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class QemuFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Reason = new(() =>
        KvmSystem.UnavailableReason() is { } kvm ? $"needs KVM: {kvm}"
        : QemuGuest.Binary() is null ? "needs QEMU: qemu-system-x86_64 is not installed (.ci/run installs Debian's qemu-system-x86)"
        : null);

    public QemuFactAttribute()
    {
        if (Reason.Value is { } reason)
            Skip = reason;
    }
}
