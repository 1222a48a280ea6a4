using Ferry.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Ferry.Cli.Tests;

/// <summary>
/// Real `ferry run` processes driven only by QEMU's own Python client (qemu.qmp, unmodified): the conformance script
/// against a running VM, and a live migration between two Ferry processes. Needs KVM and qemu.qmp.
/// </summary>
public sealed class QemuClientProcessTests(ITestOutputHelper output)
{
    private static string Script(string name) => Path.Combine(QemuQmp.RepoRoot, "tests", "Ferry.Control.Tests", "qmp", name);

    [KvmQemuQmpFact]
    public async Task Qemus_client_drives_a_real_ferry_run()
    {
        var (started, socket) = await CliTests.StartWithQmp("256M");
        using var ferry = started;
        try
        {
            var (code, text) = await Task.Run(() => QemuQmp.RunPython(Script("qemu_client_check.py"), TimeSpan.FromSeconds(120), socket));
            output.WriteLine(text);
            Assert.True(code == 0, $"qemu_client_check.py exited {code}:\n{text}");
        }
        finally
        {
            if (!ferry.HasExited)
                ferry.Kill(entireProcessTree: true);
        }
    }

    [KvmQemuQmpFact]
    public async Task Qemus_client_live_migrates_between_two_ferry_processes()
    {
        var port = CliMigrationTests.FreePort();
        var (dst, dstQmp, _, dstErr) = await CliMigrationTests.StartIncoming("256M", "defer");
        var (src, srcQmp) = await CliTests.StartWithQmp("256M");
        using (dst)
        using (src)
        {
            try
            {
                var (code, text) = await Task.Run(() => QemuQmp.RunPython(Script("qemu_migrate_check.py"), TimeSpan.FromSeconds(240), srcQmp, dstQmp, $"tcp:127.0.0.1:{port}"));
                output.WriteLine(text);
                Assert.True(code == 0, $"qemu_migrate_check.py exited {code}:\n{text}\ndestination stderr:\n{dstErr}");
                Assert.True(src.WaitForExit(30_000), "the source did not exit after quit");
                Assert.True(dst.WaitForExit(30_000), "the destination did not exit after quit");
            }
            finally
            {
                foreach (var p in new[] { src, dst })
                {
                    if (!p.HasExited)
                        p.Kill(entireProcessTree: true);
                }
            }
        }
    }
}
