using System.CommandLine;
using System.CommandLine.Parsing;
using Ferry.Migration.Machines;
using Microsoft.Extensions.Logging;

namespace Ferry.Cli;

/// <summary>`run --restore FILE --lazy[=uffd|map]`: the option, and the report logged once a lazy restore has paged everything in.</summary>
internal static partial class LazyRestoreReport
{
    /// <summary>--lazy[=uffd|map]: how a restore runs the guest before its RAM is in (docs/snapshots.md).</summary>
    public static Option<RestoreMode?> Option() => new("--lazy")
    {
        HelpName = "uffd|map",
        Arity = ArgumentArity.ZeroOrOne,
        Description = "with --restore: run the guest at once; uffd (the default) pages RAM in from the file through userfaultfd " +
                      "(each page checked before the guest sees it, the rest read in the background), map maps the file copy-on-write after checking it",
        CustomParser = r => r.Tokens.Count == 0 ? RestoreMode.Lazy : r.Tokens[0].Value switch
        {
            "uffd" or "userfaultfd" => RestoreMode.Lazy,
            "map" => RestoreMode.LazyMap,
            var other => Refuse(r, $"--lazy '{other}' is not uffd or map"),
        },
    };

    private static RestoreMode? Refuse(ArgumentResult r, string message)
    {
        r.AddError(message);
        return null;
    }

    /// <summary>
    /// Logs the pager's figures when every page is in place (a failure is the machine's exit message instead:
    /// <see cref="Ferry.Machine.MachineExitKind.MemoryFault"/>).
    /// </summary>
    public static void Log(ILogger log, string file, LazyRestore paging)
    {
        if (!paging.Completion.IsCompletedSuccessfully)
            return;
        var s = paging.Statistics();
        LogComplete(log, file, paging.MillisecondsToComplete ?? paging.MillisecondsSinceStart,
            s.PagesFetchedByFaults, s.PagesFetchedByFill, s.FillMiBPerSecond, s.PagesResolvedLocally, s.Faults,
            s.FaultLatencyP50Us, s.FaultLatencyP99Us, s.BlockedMs, s.PiecesMadeHuge);
    }

    [LoggerMessage(Level = LogLevel.Information, Message = "lazy restore of {File} complete {Milliseconds:F0} ms after it started: " +
        "{ByFaults} pages read on fault, {ByFill} by the background fill ({FillMiBps:F0} MiB/s), {Local} resolved as zero without reading; " +
        "{Faults} faults, latency p50 {P50:F0} µs, p99 {P99:F0} µs, {BlockedMs:F1} ms blocked in all; {Collapsed} pieces back on huge pages")]
    private static partial void LogComplete(ILogger logger, string file, double milliseconds, long byFaults, long byFill, double fillMiBps,
        long local, long faults, double p50, double p99, double blockedMs, long collapsed);
}
