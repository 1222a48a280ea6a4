using Ferry.Kvm;
using Ferry.Migration.Stream;
using Ferry.Migration.Transport;

namespace Ferry.Migration.Engine;

/// <summary>What the network output does for postcopy (docs/migration.md, Postcopy): the switch records, flushing the background stream, the end, and resuming a paused migration's session.</summary>
public sealed partial class ChannelOutput
{
    private ulong _sessionId;
    private volatile bool _postcopySwitched;

    /// <summary>Set: this output reconnects a paused postcopy migration with that session id (capability postcopy-resume).</summary>
    public ulong? ResumeSession { get; init; }

    /// <summary>The session id the header carried (after <see cref="Open"/>).</summary>
    public ulong SessionId => _sessionId;

    /// <summary>Where the channels go: postcopy connects its urgent channel there too.</summary>
    internal IChannelConnector Connector => connector;

    /// <summary>Verification costs downtime: it is offered only when asked for. Postcopy is offered only with postcopy-ram; a resume says so.</summary>
    private StreamCapabilities OfferedCapabilities()
    {
        var offered = StreamCapabilities.All;
        if (!capabilities.Verify)
            offered &= ~StreamCapabilities.Verify;
        if (!capabilities.PostcopyRam)
            offered &= ~StreamCapabilities.Postcopy;
        if (ResumeSession is not null)
            offered |= StreamCapabilities.Postcopy | StreamCapabilities.PostcopyResume;
        return offered;
    }

    /// <summary>A destination that cannot do what postcopy-ram (or a resume) needs is refused at setup, not at the switch.</summary>
    private void CheckPostcopyAccepted(StreamCapabilities accepted)
    {
        if (ResumeSession is { } session && !accepted.HasFlag(StreamCapabilities.PostcopyResume))
            throw new MigrationException(MigrationErrorKind.DestinationRefused, $"the destination has no paused postcopy migration {session:X16} to resume (it declined the resume)");
        if ((capabilities.PostcopyRam || ResumeSession is not null) && !accepted.HasFlag(StreamCapabilities.Postcopy))
            throw new MigrationException(MigrationErrorKind.DestinationRefused, "the destination cannot run a guest whose memory is still arriving (it declined postcopy); turn capability postcopy-ram off");
        if (capabilities.PostcopyRam && !accepted.HasFlag(StreamCapabilities.PassAcks))
            throw new MigrationException(MigrationErrorKind.DestinationRefused, "the destination declined pass-acks, which postcopy needs");
    }

    /// <summary>
    /// The switch: on channel 0 the owed pages of every block (OWED_PAGES, only the parts with a page set), the
    /// state and POSTCOPY_START; POSTCOPY_START on every other channel; all flushed. From here on the destination may
    /// run the guest (<see cref="HandedOver"/>), and the channels are reset rather than closed when given up.
    /// </summary>
    internal void StartPostcopy(IReadOnlyList<PageSet> owed, ulong owedPages, IReadOnlyList<StateSection> state)
    {
        var control = _channels[0];
        lock (control.Gate)
        {
            for (var b = 0; b < owed.Count; b++)
            {
                var bytes = owed[b].Bytes;
                for (var at = 0; at < bytes.Length; at += StreamLimits.MaxBitmapBytes)
                {
                    var part = bytes.Slice(at, Math.Min(StreamLimits.MaxBitmapBytes, bytes.Length - at));
                    if (part.ContainsAnyExcept((byte)0))
                        control.Writer.WriteOwedPages((ushort)b, (ulong)at * 8, part);
                }
            }
            foreach (var section in state)
                control.Writer.WriteState(section.Kind, section.Index, section.Name, section.Blob);
        }
        foreach (var channel in _channels)
        {
            channel.ResetOnAbort = true;
            lock (channel.Gate)
            {
                channel.Writer.WritePostcopyStart(owedPages);
                channel.Writer.Flush();
            }
        }
        _postcopySwitched = true;
    }

    /// <summary>A resumed postcopy's channels are reset, never closed, when given up (they carry nothing before the switch).</summary>
    internal void ResetOnAbort()
    {
        foreach (var channel in _channels)
            channel.ResetOnAbort = true;
        _postcopySwitched = true;
    }

    /// <summary>Pushes out what a background sender left in channel <paramref name="channel"/>'s buffer.</summary>
    internal void Flush(int channel)
    {
        var c = _channels[channel];
        lock (c.Gate)
            c.Writer.Flush();
    }

    /// <summary>Every owed page was sent: END on every channel (its own totals).</summary>
    internal void EndPostcopy()
    {
        foreach (var channel in _channels)
        {
            lock (channel.Gate)
                channel.Writer.WriteEnd();
        }
        _handedOver = true;
    }
}
