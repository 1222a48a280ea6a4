namespace Ferry.Migration.Transport;

/// <summary>Opens the source's end of one migration channel (a byte stream in both directions).</summary>
public interface IChannelConnector
{
    /// <summary>Where the channels go, for messages (e.g. "tcp:10.0.0.2:4444").</summary>
    string Description { get; }

    Task<System.IO.Stream> ConnectAsync(CancellationToken cancel);
}

/// <summary>Accepts the destination's ends of migration channels.</summary>
public interface IChannelListener : IDisposable
{
    string Description { get; }

    Task<System.IO.Stream> AcceptAsync(CancellationToken cancel);
}

/// <summary>
/// A channel stream that can wake every thread blocked on it without dropping what was already written (a socket
/// does this with shutdown; an exec: command by closing its stdin and ending it). See <see cref="ChannelLiveness.Wake"/>.
/// </summary>
public interface IShutdownStream
{
    void Shutdown();
}
