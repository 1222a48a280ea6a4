using Ferry.Devices.Legacy;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Machines;

/// <summary>
/// A live migration between two machines in one process over loopback TCP, through the same engine, receiver and
/// transport as between hosts: what `ferry demo`, the tests and the benchmark use.
/// </summary>
public static class LoopbackMigration
{
    /// <summary>
    /// Creates a destination machine like <paramref name="source"/> (same configuration, given console), migrates
    /// into it and stops the source. On failure the destination is disposed and the source runs on.
    /// </summary>
    public static (GuestMachine Destination, MigrationStats Stats, IncomingReport Report) Run(
        GuestMachine source, ISerialOutput destinationConsole, MigrationParameters? parameters = null, MigrationCapabilities? capabilities = null)
    {
        var destination = GuestMachine.Create(source.Config, destinationConsole, source.Loggers);
        try
        {
            destination.Start(paused: true);
            using var listener = new TcpChannelListener(MigrationUri.Parse("tcp:127.0.0.1:0"));
            var receive = Task.Run(() => MigrationReceiver.Receive(new MachineMigrationTarget(destination), listener, CancellationToken.None));
            MigrationStats stats;
            using (var migration = new PrecopyMigration(new MachineMigrationSource(source), parameters ?? new MigrationParameters(), capabilities ?? new MigrationCapabilities()))
            {
                try
                {
                    stats = migration.Run(new TcpChannelConnector(listener.Uri));
                }
                catch (MigrationException)
                {
                    listener.Dispose();
                    _ = receive.ContinueWith(t => _ = t.Exception, TaskScheduler.Default);
                    throw;
                }
            }
            var report = receive.GetAwaiter().GetResult();
            source.Stop(ShutdownCause.HostQmpQuit, "migrated");
            return (destination, stats, report);
        }
        catch
        {
            destination.Dispose();
            throw;
        }
    }
}
