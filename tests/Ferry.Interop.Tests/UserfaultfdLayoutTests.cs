using System.Globalization;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text;
using Ferry.Interop.Userfault;
using Xunit;

namespace Ferry.Interop.Tests;

/// <summary>
/// Checks every userfaultfd struct layout, ioctl number and constant the C# side uses, and the madvise numbers,
/// against the machine's own &lt;linux/userfaultfd.h&gt; and &lt;linux/mman.h&gt;: as <see cref="KvmLayoutTests"/>,
/// a C file of _Static_asserts generated from the C# definitions and compiled with gcc.
/// </summary>
public sealed class UserfaultfdLayoutTests
{
    [Fact]
    public void Every_struct_size_offset_ioctl_and_constant_matches_the_kernel_headers()
    {
        var (source, assertions) = GenerateAssertions();
        // 6 structs (26 fields), 7 ioctls, 10 constants, 5 madvise numbers at least.
        Assert.True(assertions >= 50, $"only {assertions} assertions generated");
        var (ok, output) = KvmLayoutTests.CompileC(source);
        Assert.True(ok, $"the C# userfaultfd definitions disagree with <linux/userfaultfd.h>:\n{output}\n{source}");
    }

    [Fact]
    public void A_wrong_definition_is_caught()
    {
        var (ok, output) = KvmLayoutTests.CompileC("#include <linux/userfaultfd.h>\n_Static_assert(sizeof(struct uffd_msg) == 33, \"uffd_msg size\");\n");
        Assert.False(ok);
        Assert.Contains("uffd_msg size", output, StringComparison.Ordinal);
    }

    [Fact]
    public void Ioctl_numbers_match_the_values_the_man_page_lists()
    {
        // Independent of the headers: the numbers as strace prints them.
        Assert.Equal(0xC018AA3Fu, UffdIoctls.UFFDIO_API);
        Assert.Equal(0xC020AA00u, UffdIoctls.UFFDIO_REGISTER);
        Assert.Equal(0xC028AA03u, UffdIoctls.UFFDIO_COPY);
        Assert.Equal(0xAA00u, UffdIoctls.USERFAULTFD_IOC_NEW);
        Assert.Equal(32, Marshal.SizeOf<UffdMsg>());
        // Newer than this machine's headers (Linux 6.8's uapi: five 64-bit fields, ioctl 0x05, feature bit 16).
        Assert.Equal(0xC028AA05u, UffdIoctls.UFFDIO_MOVE);
        Assert.Equal(40, Marshal.SizeOf<UffdioMove>());
        Assert.Equal(32, (int)Marshal.OffsetOf<UffdioMove>(nameof(UffdioMove.Move)));
        Assert.Equal(1UL << 16, UffdConstants.UFFD_FEATURE_MOVE);
    }

    private static (string Source, int Count) GenerateAssertions()
    {
        var sb = new StringBuilder("#include <stddef.h>\n#include <linux/ioctl.h>\n#include <linux/userfaultfd.h>\n#include <linux/mman.h>\n");
        var count = 0;
        void Assert(string expr, string label)
        {
            sb.Append("_Static_assert(").Append(expr).Append(", \"").Append(label).Append("\");\n");
            count++;
        }
        foreach (var type in typeof(UserfaultFd).Assembly.GetTypes())
        {
            var attr = type.GetCustomAttribute<UffdStructAttribute>();
            if (attr is null)
                continue;
            var c = $"struct {attr.CName}";
            var guard = type.GetCustomAttribute<HeaderSinceAttribute>()?.Macro;
            if (guard is not null)
                sb.Append("#ifdef ").Append(guard).Append('\n');
            Assert($"sizeof({c}) == {Marshal.SizeOf(type)}", $"sizeof {attr.CName} (C# {type.Name})");
            foreach (var field in type.GetFields(BindingFlags.Instance | BindingFlags.Public))
            {
                var member = field.GetCustomAttribute<CMemberAttribute>()?.Path ?? KvmLayoutTests.SnakeCase(field.Name);
                var offset = Marshal.OffsetOf(type, field.Name);
                Assert($"offsetof({c}, {member}) == {offset}", $"{attr.CName}.{member} (C# {type.Name}.{field.Name})");
                Assert($"sizeof((({c} *)0)->{member}) == {Marshal.SizeOf(field.FieldType)}", $"size of {attr.CName}.{member}");
            }
            if (guard is not null)
                sb.Append("#endif\n");
        }
        void Guarded(FieldInfo field, string expr)
        {
            var guard = field.GetCustomAttribute<HeaderSinceAttribute>()?.Macro;
            if (guard is not null)
                sb.Append("#ifdef ").Append(guard).Append('\n');
            Assert(expr, field.Name);
            if (guard is not null)
                sb.Append("#endif\n");
        }
        foreach (var field in typeof(UffdIoctls).GetFields(BindingFlags.Static | BindingFlags.Public))
            Guarded(field, $"{field.Name} == {(uint)field.GetValue(null)!}u");
        foreach (var field in typeof(UffdConstants).GetFields(BindingFlags.Static | BindingFlags.Public).Where(f => f.IsLiteral))
            Guarded(field, $"{field.Name} == {Convert.ToUInt64(field.GetRawConstantValue(), CultureInfo.InvariantCulture)}ULL");
        foreach (var name in new[] { "MADV_DONTNEED", "MADV_REMOVE", "MADV_HUGEPAGE", "MADV_NOHUGEPAGE", "MADV_POPULATE_READ", "MADV_COLLAPSE" })
            Assert($"{name} == {typeof(Libc).GetField(name)!.GetRawConstantValue()}", name);
        return (sb.ToString(), count);
    }
}
