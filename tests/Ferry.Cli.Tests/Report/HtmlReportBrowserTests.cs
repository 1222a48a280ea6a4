using System.Diagnostics;
using System.IO.Compression;
using System.Text.Json.Nodes;
using Ferry.Cli.Report;
using Ferry.TestSupport;
using Xunit;
using Xunit.Abstractions;

namespace Ferry.Cli.Tests.Report;

/// <summary>
/// The HTML report in a real headless browser (Debian's chromium): it renders, the DOM it builds shows the JSON's
/// numbers, and a screenshot of it is not blank. The screenshots stay next to the test assembly, in html-report/.
/// </summary>
public sealed class HtmlReportBrowserTests(ITestOutputHelper output)
{
    [ChromiumFact]
    public void Chromium_renders_the_report_with_the_JSON_numbers()
    {
        var outputDir = Path.Combine(AppContext.BaseDirectory, "html-report");
        Directory.CreateDirectory(outputDir);
        foreach (var sample in new[] { "completed", "failed-no-pass", "completed-55-passes" })
        {
            var report = HtmlReportTests.Sample(sample);
            var html = Path.Combine(outputDir, $"{sample}.html");
            HtmlReport.Write(report, html);
            File.WriteAllText(Path.ChangeExtension(html, ".json"), report.ToJsonString(new System.Text.Json.JsonSerializerOptions { WriteIndented = true }));

            var dom = RunChromium($"file://{html}", "--dump-dom");
            Assert.Contains("</svg>", dom, StringComparison.Ordinal);
            var fields = ReportDom.AssertMatches(dom, report);
            Assert.Equal(ReportDom.Fields(HtmlReport.Render(report)).Count, fields.Count);

            var png = Path.ChangeExtension(html, ".png");
            File.Delete(png);
            RunChromium($"file://{html}", $"--screenshot={png}", "--window-size=1200,900", "--hide-scrollbars");
            Assert.True(File.Exists(png), $"chromium wrote no screenshot {png}");
            var (width, height, colors) = PngColors(File.ReadAllBytes(png));
            output.WriteLine($"{png}: {width}x{height}, {colors} colours, {new FileInfo(png).Length} bytes");
            Assert.Equal((1200, 900), (width, height));
            Assert.True(colors >= 50, $"the screenshot looks blank: {colors} colours");
        }
    }

    private string RunChromium(string url, params string[] args)
    {
        var profile = Path.Combine(Path.GetTempPath(), $"ferry-chromium-{Guid.NewGuid():N}");
        var psi = new ProcessStartInfo(Chromium.Binary()!)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        foreach (var a in (string[])["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync", $"--user-data-dir={profile}", .. args, url])
            psi.ArgumentList.Add(a);
        try
        {
            using var p = Process.Start(psi)!;
            var stdout = p.StandardOutput.ReadToEndAsync();
            var stderr = p.StandardError.ReadToEndAsync();
            if (!p.WaitForExit(90_000))
            {
                p.Kill(entireProcessTree: true);
                Assert.Fail($"chromium did not finish within 90 s: {stderr.Result}");
            }
            Assert.True(p.ExitCode == 0, $"chromium exited {p.ExitCode}: {stderr.Result}");
            return stdout.Result;
        }
        finally
        {
            try
            {
                Directory.Delete(profile, recursive: true);
            }
            catch (IOException)
            {
            }
        }
    }

    /// <summary>Width, height and the number of distinct colours of an 8-bit RGB or RGBA, non-interlaced PNG (what chromium writes).</summary>
    internal static (int Width, int Height, int Colors) PngColors(byte[] png)
    {
        int BigEndian(int at) => (png[at] << 24) | (png[at + 1] << 16) | (png[at + 2] << 8) | png[at + 3];
        var width = BigEndian(16);
        var height = BigEndian(20);
        var (depth, type, interlace) = (png[24], png[25], png[28]);
        Assert.True(depth == 8 && type is 2 or 6 && interlace == 0, $"PNG depth {depth} type {type} interlace {interlace} is not handled");
        var bpp = type == 6 ? 4 : 3;
        using var idat = new MemoryStream();
        for (var at = 8; at < png.Length;)
        {
            var length = BigEndian(at);
            if (png[at + 4] == 'I' && png[at + 5] == 'D' && png[at + 6] == 'A' && png[at + 7] == 'T')
                idat.Write(png, at + 8, length);
            at += 12 + length;
        }
        idat.Position = 0;
        using var inflated = new MemoryStream();
        using (var z = new ZLibStream(idat, CompressionMode.Decompress))
            z.CopyTo(inflated);
        var data = inflated.ToArray();
        var stride = width * bpp;
        var previous = new byte[stride];
        var row = new byte[stride];
        var colors = new HashSet<int>();
        for (var y = 0; y < height; y++)
        {
            var filter = data[y * (stride + 1)];
            Array.Copy(data, y * (stride + 1) + 1, row, 0, stride);
            for (var i = 0; i < stride; i++)
            {
                int a = i >= bpp ? row[i - bpp] : 0, b = previous[i], c = i >= bpp ? previous[i - bpp] : 0;
                row[i] += filter switch
                {
                    1 => (byte)a,
                    2 => (byte)b,
                    3 => (byte)((a + b) / 2),
                    4 => Paeth(a, b, c),
                    _ => 0,
                };
            }
            for (var x = 0; x < width; x++)
                colors.Add((row[x * bpp] << 16) | (row[x * bpp + 1] << 8) | row[x * bpp + 2]);
            (previous, row) = (row, previous);
        }
        return (width, height, colors.Count);
    }

    private static byte Paeth(int a, int b, int c)
    {
        var p = a + b - c;
        int pa = Math.Abs(p - a), pb = Math.Abs(p - b), pc = Math.Abs(p - c);
        return (byte)(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
    }
}
