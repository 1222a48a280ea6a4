using Ferry.Control;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Transport;
using Microsoft.Extensions.Logging;

namespace Ferry.Cli;

/// <summary>
/// `ferry run --incoming URI|defer`: the machine was started parked (inmigrate); this starts the incoming migration
/// (URI) or leaves that to QMP's migrate-incoming (defer), then waits until the guest runs. A failed load exits
/// <see cref="ExitCode.LoadFailed"/> with the reason, unless migrate-incoming asked for exit-on-error false; nothing
/// is left behind (the machine's memory goes with the process).
/// </summary>
internal static partial class IncomingMigration
{
    /// <summary>
    /// Returns once the guest runs here, the VM stays up after a failure (exit-on-error false), or the machine ended
    /// while waiting (QMP quit); throws <see cref="CliFailureException"/> for a failure or a signal while waiting.
    /// </summary>
    public static void Run(GuestMachine machine, MigrationCommands migration, MigrationUri? uri, ILogger log)
    {
        var incoming = migration.Incoming;
        if (uri is not null)
        {
            try
            {
                incoming.Start(uri, migration.Settings.Parameters, migration.Settings.Capabilities);
            }
            catch (IncomingRefusedException e)
            {
                throw new CliFailureException($"--incoming: {e.Message}");
            }
            LogWaiting(log, incoming.Description ?? uri.ToString());
        }
        else
        {
            LogDeferred(log);
        }
        var finished = Task.WhenAny(incoming.Finished, machine.Exited).GetAwaiter().GetResult();
        if (finished != incoming.Finished)
        {
            incoming.Dispose();
            if (machine.Exited.Result.Cause == ShutdownCause.HostSignal)
                throw new CliFailureException("incoming migration: interrupted while waiting", ExitCode.LoadFailed);
            return;
        }
        var outcome = incoming.Finished.Result;
        if (outcome.Status != MigrationStatus.Completed)
        {
            if (outcome.ExitOnError)
                throw new CliFailureException($"incoming migration failed: {outcome.Error}", ExitCode.LoadFailed);
            LogFailedStayingUp(log, outcome.Error ?? "");
            return;
        }
        if (outcome.Report is { } report)
        {
            LogLoaded(log, report.Channels, report.TotalMs, report.DataPages, report.ZeroPages, report.BalloonedPages,
                report.Bytes / (1024.0 * 1024), report.StateRestoreMs, report.ResumeMs);
            if (report.VerifiedChunks > 0)
                LogVerified(log, report.VerifiedChunks, report.VerifyMs);
            if (!report.SourceToldResumed)
                LogSourceNotTold(log);
        }
        else if (outcome.Restored is { } restored)
        {
            LogRestored(log, outcome.Uri, restored.Milliseconds, restored.PagesLoaded, restored.BytesRead / (1024.0 * 1024), restored.BalloonedPages, restored.StateSections);
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "the source could not be told the guest runs here; it stays paused (postmigrate) until its operator stops or resumes it")]
    private static partial void LogSourceNotTold(ILogger logger);

    [LoggerMessage(Level = LogLevel.Information, Message = "memory verified: {Chunks} chunks of 2 MiB equal the source's ({Ms:F1} ms of comparing, summed over the channels)")]
    private static partial void LogVerified(ILogger logger, long chunks, double ms);

    [LoggerMessage(Level = LogLevel.Information, Message = "waiting for a migration on {Uri}")]
    private static partial void LogWaiting(ILogger logger, string uri);

    [LoggerMessage(Level = LogLevel.Information, Message = "waiting for QMP migrate-incoming (--incoming defer)")]
    private static partial void LogDeferred(ILogger logger);

    [LoggerMessage(Level = LogLevel.Error, Message = "incoming migration failed: {Reason}; the VM stays up (migrate-incoming exit-on-error false) until quit")]
    private static partial void LogFailedStayingUp(ILogger logger, string reason);

    [LoggerMessage(Level = LogLevel.Information, Message = "migration loaded from {Channels} channel(s) in {TotalMs:F0} ms: {DataPages} pages, {ZeroPages} zero pages, " +
        "{BalloonedPages} ballooned pages, {Mib:F1} MiB; state restored in {StateMs:F1} ms, vCPUs resumed in {ResumeMs:F1} ms; guest running")]
    private static partial void LogLoaded(ILogger logger, int channels, double totalMs, ulong dataPages, ulong zeroPages, ulong balloonedPages, double mib, double stateMs, double resumeMs);

    [LoggerMessage(Level = LogLevel.Information, Message = "migration loaded from {Uri} in {Milliseconds:F0} ms: {Pages} pages ({Mib:F1} MiB read), {Ballooned} ballooned pages, {Sections} state sections; guest running")]
    private static partial void LogRestored(ILogger logger, string uri, double milliseconds, long pages, double mib, long ballooned, int sections);
}
