using Xunit;

namespace Ferry.TestSupport;

/// <summary>Where Debian's chromium is (test.sh installs it with scripts/install-chromium.sh), or null.</summary>
public static class Chromium
{
    private static readonly Lazy<string?> Path = new(() =>
    {
        foreach (var name in new[] { "chromium", "chromium-browser" })
        {
            foreach (var dir in (Environment.GetEnvironmentVariable("PATH") ?? "/usr/bin").Split(':', StringSplitOptions.RemoveEmptyEntries))
            {
                var candidate = System.IO.Path.Combine(dir, name);
                if (File.Exists(candidate))
                    return candidate;
            }
        }
        return null;
    });

    public static string? Binary() => Path.Value;
}

/// <summary>A test that needs a real headless browser; skipped, with the reason, where chromium is not installed.</summary>
[AttributeUsage(AttributeTargets.Method)]
public sealed class ChromiumFactAttribute : FactAttribute
{
    public ChromiumFactAttribute()
    {
        if (Chromium.Binary() is null)
            Skip = "needs chromium: it is not installed (test.sh installs Debian's chromium with scripts/install-chromium.sh)";
    }
}
