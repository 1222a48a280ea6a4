using Ferry.Kvm;
using Xunit;

namespace Ferry.TestSupport;

/// <summary>
/// A test that needs /dev/kvm. Where KVM cannot be used it is skipped with the reason (shown in the test output
/// and counted as skipped by .ci/run), never passed silently.
/// </summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class KvmFactAttribute : FactAttribute
{
    private static readonly Lazy<string?> Reason = new(KvmSystem.UnavailableReason);

    public KvmFactAttribute()
    {
        if (Reason.Value is { } reason)
            Skip = $"needs KVM: {reason}";
    }
}

/// <summary>A theory that needs /dev/kvm; skipped with the reason where KVM cannot be used.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class KvmTheoryAttribute : TheoryAttribute
{
    public KvmTheoryAttribute()
    {
        if (KvmSystem.UnavailableReason() is { } reason)
            Skip = $"needs KVM: {reason}";
    }
}
