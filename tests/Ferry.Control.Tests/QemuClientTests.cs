using Ferry.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Ferry.Control.Tests;

/// <summary>
/// QEMU's own client library, unmodified, against Ferry's QMP server in-process (the commands `ferry run` registers
/// that need no KVM, over a fake machine): qmp/qemu_client_check.py connects, negotiates, queries, stops and
/// continues with the events, and checks an error of each class. Its exit code is the verdict; its output is shown.
/// </summary>
public sealed class QemuClientTests(ITestOutputHelper output)
{
    [QemuQmpFact]
    public async Task Qemus_python_client_works_unmodified()
    {
        await using var ferry = new FerryLikeServer();
        var script = Path.Combine(QemuQmp.RepoRoot, "tests", "Ferry.Control.Tests", "qmp", "qemu_client_check.py");
        var (code, text) = await Task.Run(() => QemuQmp.RunPython(script, TimeSpan.FromSeconds(120), ferry.Path));
        output.WriteLine(text);
        Assert.True(code == 0, $"qemu_client_check.py exited {code}:\n{text}");
    }
}
