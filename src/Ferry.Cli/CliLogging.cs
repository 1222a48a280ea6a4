using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;

namespace Ferry.Cli;

/// <summary>
/// The VMM's own messages (machine, devices, what `run` did) go through Microsoft.Extensions.Logging: one line each
/// on stderr with a UTC timestamp and the level, filtered by `--log-level`. The CLI's one-line errors are not log
/// lines: <see cref="Program.Fail"/> prints them.
/// </summary>
internal static class CliLogging
{
    public static readonly string[] Levels = ["trace", "debug", "information", "warning", "error", "critical", "none"];

    public static LogLevel ParseLevel(string text) => text.ToLowerInvariant() switch
    {
        "trace" => LogLevel.Trace,
        "debug" => LogLevel.Debug,
        "information" or "info" => LogLevel.Information,
        "warning" or "warn" => LogLevel.Warning,
        "error" => LogLevel.Error,
        "critical" => LogLevel.Critical,
        "none" => LogLevel.None,
        _ => throw new UsageException($"--log-level '{text}' is not one of {string.Join(", ", Levels)}"),
    };

    public static ILoggerFactory Create(LogLevel minimum) => LoggerFactory.Create(builder => builder
        .SetMinimumLevel(minimum)
        .AddSimpleConsole(o =>
        {
            o.SingleLine = true;
            o.UseUtcTimestamp = true;
            o.TimestampFormat = "HH:mm:ss.fff ";
            o.IncludeScopes = false;
            o.ColorBehavior = Console.IsErrorRedirected ? LoggerColorBehavior.Disabled : LoggerColorBehavior.Default;
        })
        .AddConsole(o => o.LogToStandardErrorThreshold = LogLevel.Trace));
}
