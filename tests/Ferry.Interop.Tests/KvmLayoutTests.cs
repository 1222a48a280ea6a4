using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Interop.Kvm;
using Xunit;

namespace Ferry.Interop.Tests;

/// <summary>
/// Checks every KVM struct layout, ioctl number and constant the C# side uses against the machine's own
/// &lt;linux/kvm.h&gt;: the test writes a C file of _Static_asserts from the C# definitions and compiles it with gcc.
/// </summary>
public sealed class KvmLayoutTests
{
    private static readonly string[] RunUnions = ["fail_entry", "system_event", "internal", "mmio", "io"];

    [Fact]
    public void Every_struct_size_offset_ioctl_and_constant_matches_the_kernel_headers()
    {
        var (source, assertions) = GenerateAssertions();
        // Every [KvmStruct] type, every ioctl and every kvm_run offset is covered: 25 structs, 40 ioctls at least.
        Assert.True(assertions > 200, $"only {assertions} assertions generated");
        var (ok, output) = CompileC(source);
        Assert.True(ok, $"the C# KVM definitions disagree with <linux/kvm.h>:\n{output}");
    }

    [Fact]
    public void A_wrong_definition_is_caught()
    {
        // Guards against the check passing by doing nothing: a deliberately wrong size must fail to compile.
        var (ok, output) = CompileC("#include <linux/kvm.h>\n_Static_assert(sizeof(struct kvm_regs) == 143, \"kvm_regs size\");\n");
        Assert.False(ok);
        Assert.Contains("kvm_regs size", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Ioctl_numbers_match_the_values_the_field_guide_lists()
    {
        // Independent of the headers: a few numbers checked by hand against the reference.
        Assert.Equal(0x4020AE46u, KvmIoctls.KVM_SET_USER_MEMORY_REGION);
        Assert.Equal(0x4010AE42u, KvmIoctls.KVM_GET_DIRTY_LOG);
        Assert.Equal(0x8138AE83u, KvmIoctls.KVM_GET_SREGS);
        Assert.Equal(0xC008AE05u, KvmIoctls.KVM_GET_SUPPORTED_CPUID);
        Assert.Equal(0xAE80u, KvmIoctls.KVM_RUN);
    }

    internal static string SnakeCase(string name)
    {
        var sb = new StringBuilder();
        for (var i = 0; i < name.Length; i++)
        {
            var c = name[i];
            if (i > 0 && char.IsUpper(c) && (char.IsLower(name[i - 1]) || char.IsDigit(name[i - 1])))
                sb.Append('_');
            sb.Append(char.ToLowerInvariant(c));
        }
        return sb.ToString();
    }

    private static (string Source, int Count) GenerateAssertions()
    {
        var sb = new StringBuilder("#include <stddef.h>\n#include <linux/kvm.h>\n");
        var count = 0;
        void Assert(string expr, string label)
        {
            sb.Append("_Static_assert(").Append(expr).Append(", \"").Append(label).Append("\");\n");
            count++;
        }
        var assembly = typeof(KvmRegs).Assembly;
        foreach (var type in assembly.GetTypes())
        {
            var attr = type.GetCustomAttribute<KvmStructAttribute>();
            if (attr is null)
                continue;
            var c = $"struct {attr.CName}";
            Assert($"sizeof({c}) == {Marshal.SizeOf(type)}", $"sizeof {attr.CName} (C# {type.Name})");
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public))
            {
                var offset = Marshal.OffsetOf(type, field.Name);
                Assert($"offsetof({c}, {SnakeCase(field.Name)}) == {offset}", $"{attr.CName}.{SnakeCase(field.Name)} (C# {type.Name}.{field.Name})");
            }
        }
        foreach (var field in typeof(KvmIoctls).GetFields(BindingFlags.Static | BindingFlags.Public))
            Assert($"{field.Name} == {(uint)field.GetValue(null)!}u", field.Name);
        foreach (var holder in new[] { typeof(KvmExitReasons), typeof(KvmConstants) })
        {
            foreach (var field in holder.GetFields(BindingFlags.Static | BindingFlags.Public).Where(f => f.IsLiteral))
                Assert($"{field.Name} == {Convert.ToInt64(field.GetRawConstantValue(), System.Globalization.CultureInfo.InvariantCulture)}", field.Name);
        }
        foreach (var field in typeof(KvmRunOffsets).GetFields(BindingFlags.Static | BindingFlags.Public).Where(f => f.IsLiteral))
        {
            var member = field.Name;
            foreach (var union in RunUnions)
            {
                if (member.StartsWith(union + "_", StringComparison.Ordinal))
                {
                    member = union + "." + member[(union.Length + 1)..];
                    break;
                }
            }
            Assert($"offsetof(struct kvm_run, {member}) == {field.GetRawConstantValue()}", $"kvm_run.{member}");
        }
        return (sb.ToString(), count);
    }

    internal static (bool Ok, string Output) CompileC(string source)
    {
        var dir = Directory.CreateTempSubdirectory("ferry-layout-");
        try
        {
            var file = Path.Combine(dir.FullName, "layout.c");
            File.WriteAllText(file, source);
            using var gcc = Process.Start(new ProcessStartInfo("gcc", ["-fsyntax-only", "-std=gnu11", file])
            {
                RedirectStandardError = true,
                RedirectStandardOutput = true,
            })!;
            var stderr = gcc.StandardError.ReadToEnd();
            gcc.WaitForExit();
            return (gcc.ExitCode == 0, stderr);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
