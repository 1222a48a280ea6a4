using System.Runtime.InteropServices;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;
using Microsoft.Extensions.Logging;

namespace Ferry.Cli;

/// <summary>
/// `ferry run --incoming tcp:HOST:PORT`: the machine is created and parked, waits for one migration, loads it and
/// resumes the guest. A failed load exits <see cref="ExitCode.LoadFailed"/> with the reason; nothing is left behind
/// (the machine's memory goes with the process).
/// </summary>
internal static partial class IncomingMigration
{
    /// <returns><see cref="ExitCode.Ok"/> when the guest runs; <see cref="ExitCode.LoadFailed"/> when the migration failed.</returns>
    public static ExitCode Run(GuestMachine machine, MigrationUri uri, ILogger log)
    {
        machine.Start(paused: true);
        TcpChannelListener listener;
        try
        {
            listener = new TcpChannelListener(uri);
        }
        catch (IOException e)
        {
            throw new CliFailureException($"--incoming: {e.Message}");
        }
        using (listener)
        {
            using var cancel = new CancellationTokenSource();
            // A signal while waiting ends the wait; the caller's handlers stop the machine.
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; cancel.Cancel(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; cancel.Cancel(); });
            LogWaiting(log, listener.Uri.ToString());
            try
            {
                var report = MigrationReceiver.Receive(new MachineMigrationTarget(machine), listener, cancel.Token);
                LogLoaded(log, report.Channels, report.TotalMs, report.DataPages, report.ZeroPages, report.BalloonedPages,
                    report.Bytes / (1024.0 * 1024), report.StateRestoreMs, report.ResumeMs);
                if (report.VerifiedChunks > 0)
                    LogVerified(log, report.VerifiedChunks, report.VerifyMs);
                if (!report.SourceToldResumed)
                    LogSourceNotTold(log);
                return ExitCode.Ok;
            }
            catch (OperationCanceledException)
            {
                throw new CliFailureException("incoming migration: interrupted while waiting", ExitCode.LoadFailed);
            }
            catch (MigrationException e)
            {
                throw new CliFailureException($"incoming migration failed: {e.Message}", ExitCode.LoadFailed);
            }
        }
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "the source could not be told the guest runs here; it stays paused (postmigrate) until its operator stops or resumes it")]
    private static partial void LogSourceNotTold(ILogger logger);

    [LoggerMessage(Level = LogLevel.Information, Message = "memory verified: {Chunks} chunks of 2 MiB equal the source's ({Ms:F1} ms of comparing, summed over the channels)")]
    private static partial void LogVerified(ILogger logger, long chunks, double ms);

    [LoggerMessage(Level = LogLevel.Information, Message = "waiting for a migration on {Uri}")]
    private static partial void LogWaiting(ILogger logger, string uri);

    [LoggerMessage(Level = LogLevel.Information, Message = "migration loaded from {Channels} channel(s) in {TotalMs:F0} ms: {DataPages} pages, {ZeroPages} zero pages, " +
        "{BalloonedPages} ballooned pages, {Mib:F1} MiB; state restored in {StateMs:F1} ms, vCPUs resumed in {ResumeMs:F1} ms; guest running")]
    private static partial void LogLoaded(ILogger logger, int channels, double totalMs, ulong dataPages, ulong zeroPages, ulong balloonedPages, double mib, double stateMs, double resumeMs);
}
