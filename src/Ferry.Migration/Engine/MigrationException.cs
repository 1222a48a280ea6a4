namespace Ferry.Migration.Engine;

/// <summary>
/// What ended a migration, a snapshot save or an incoming load before it completed. Derived from the places that
/// give up: the engine, the outputs and the receiver. Front ends map a kind to their own terms (an exit code, a
/// QMP error class); the message stays the human-readable reason.
/// </summary>
public enum MigrationErrorKind
{
    /// <summary>Something this side did not expect (an exception from the machine or a bug); the message names its type.</summary>
    Internal,

    /// <summary>migrate_cancel (or an interrupted wait): the source runs on.</summary>
    Cancelled,

    /// <summary>A channel broke: a connection lost or closed under a sender or a loader.</summary>
    ChannelFailed,

    /// <summary>The destination refused the stream at setup (other memory, capabilities it was not offered).</summary>
    DestinationRefused,

    /// <summary>The destination gave up and said why (FAILED, a failed load, an unexpected reply).</summary>
    DestinationFailed,

    /// <summary>A wait ran out: a connect, a channel joining, a pass to be loaded, the guest to resume.</summary>
    Timeout,

    /// <summary>A record, reply or state section failed validation.</summary>
    InvalidStream,

    /// <summary>The output could not be opened: a snapshot file that cannot be created, a VM the stream cannot carry.</summary>
    OutputFailed,

    /// <summary>TLS refused the peer (untrusted or expired certificate, a subject outside tls-authz, a peer without TLS) or could not be set up.</summary>
    TlsRefused,

    /// <summary>A verified migration's destination found memory that differs from the source's (ferry-verify); the guest was not resumed there.</summary>
    VerifyFailed,
}

/// <summary>
/// A migration that failed or was cancelled; the message says why, the kind says what kind of failure. The source VM
/// is running again, unless <see cref="DestinationMayBeRunning"/>: then it stays paused (docs/migration.md, the point
/// of no return).
/// </summary>
public sealed class MigrationException : Exception
{
    public MigrationException() { }

    public MigrationException(string message) : base(message) { }

    public MigrationException(string message, Exception inner) : base(message, inner) { }

    public MigrationException(MigrationErrorKind kind, string message, Exception? inner = null) : base(message, inner) => Kind = kind;

    public MigrationException(MigrationErrorKind kind, string message, Exception? inner, bool destinationMayBeRunning) : this(kind, message, inner) =>
        DestinationMayBeRunning = destinationMayBeRunning;

    public MigrationErrorKind Kind { get; } = MigrationErrorKind.Internal;

    /// <summary>Failed after the point of no return with no word from the destination: the source guest was left paused.</summary>
    public bool DestinationMayBeRunning { get; }
}
