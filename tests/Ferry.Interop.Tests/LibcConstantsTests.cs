using System.Reflection;
using System.Text;
using Xunit;

namespace Ferry.Interop.Tests;

/// <summary>
/// Every integer constant in <see cref="Libc"/> is checked against the C library's own headers: a C file of
/// _Static_asserts generated from the C# values, compiled with gcc.
/// </summary>
public sealed class LibcConstantsTests
{
    private const string Headers = """
        #define _GNU_SOURCE
        #include <errno.h>
        #include <fcntl.h>
        #include <signal.h>
        #include <sys/mman.h>
        #include <linux/mman.h>
        #include <poll.h>
        #include <sys/eventfd.h>
        #include <sys/syscall.h>
        #include <linux/falloc.h>
        #include <linux/memfd.h>
        #include <unistd.h>

        """;

    [Fact]
    public void Every_constant_matches_the_C_headers()
    {
        var sb = new StringBuilder(Headers);
        var checkedNames = new List<string>();
        foreach (var field in typeof(Libc).GetFields(BindingFlags.Public | BindingFlags.Static))
        {
            if (!field.IsLiteral || field.GetRawConstantValue() is not (int or uint or long))
                continue;
            var value = Convert.ToInt64(field.GetRawConstantValue(), System.Globalization.CultureInfo.InvariantCulture);
            // A constant a newer kernel added may be missing from this machine's headers: say so rather than pass
            // (glibc's lag behind the kernel is why <linux/mman.h> is included too: MADV_COLLAPSE is only there).
            sb.Append($"#ifndef {field.Name}\n#error \"{field.Name} is not defined by the headers\"\n#else\n");
            sb.Append($"_Static_assert({field.Name} == {value}L, \"{field.Name} is {value} in Libc.cs\");\n#endif\n");
            checkedNames.Add(field.Name);
        }
        Assert.Contains("O_NOFOLLOW", checkedNames);
        Assert.Contains("MADV_HUGEPAGE", checkedNames);
        var (ok, output) = KvmLayoutTests.CompileC(sb.ToString());
        Assert.True(ok, $"Libc.cs disagrees with the C headers:\n{output}");
    }
}
