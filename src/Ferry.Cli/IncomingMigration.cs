using System.Runtime.InteropServices;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Machines;
using Ferry.Migration.Transport;

namespace Ferry.Cli;

/// <summary>
/// `ferry run --incoming tcp:HOST:PORT`: the machine is created and parked, waits for one migration, loads it and
/// resumes the guest. A failed load exits non-zero (5) with the reason; nothing is left behind (the machine's memory
/// goes with the process).
/// </summary>
internal static class IncomingMigration
{
    public const int FailedExitCode = 5;

    /// <returns>0 when the guest runs; <see cref="FailedExitCode"/> when the migration failed.</returns>
    public static int Run(GuestMachine machine, MigrationUri uri)
    {
        machine.Start(paused: true);
        TcpChannelListener listener;
        try
        {
            listener = new TcpChannelListener(uri);
        }
        catch (IOException e)
        {
            Console.Error.WriteLine($"ferry: --incoming: {e.Message}");
            return 1;
        }
        using (listener)
        {
            using var cancel = new CancellationTokenSource();
            // A signal while waiting ends the wait; the caller's handlers stop the machine.
            using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c => { c.Cancel = true; cancel.Cancel(); });
            using var sigterm = PosixSignalRegistration.Create(PosixSignal.SIGTERM, c => { c.Cancel = true; cancel.Cancel(); });
            Console.Error.WriteLine($"ferry: waiting for a migration on {listener.Uri}");
            try
            {
                var report = MigrationReceiver.Receive(new MachineMigrationTarget(machine), listener, cancel.Token);
                Console.Error.WriteLine(
                    $"ferry: migration loaded from {report.Channels} channel(s) in {report.TotalMs:F0} ms: {report.DataPages} pages, " +
                    $"{report.ZeroPages} zero pages, {report.BalloonedPages} ballooned pages, {report.Bytes / (1024.0 * 1024):F1} MiB; " +
                    $"state restored in {report.StateRestoreMs:F1} ms, vCPUs resumed in {report.ResumeMs:F1} ms; guest running");
                if (!report.SourceToldResumed)
                    Console.Error.WriteLine("ferry: WARNING: the source could not be told the guest runs here; it stays paused (postmigrate) until its operator stops or resumes it");
                return 0;
            }
            catch (OperationCanceledException)
            {
                Console.Error.WriteLine("ferry: incoming migration: interrupted while waiting");
                return FailedExitCode;
            }
            catch (MigrationException e)
            {
                Console.Error.WriteLine($"ferry: incoming migration failed: {e.Message}");
                return FailedExitCode;
            }
        }
    }
}
