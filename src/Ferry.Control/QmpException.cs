namespace Ferry.Control;

/// <summary>A QMP error reply: {"error": {"class": Class, "desc": Message}}.</summary>
public sealed class QmpException : Exception
{
    public const string GenericError = "GenericError";
    public const string CommandNotFound = "CommandNotFound";

    public QmpException(string errorClass, string message) : base(message) => Class = errorClass;

    public QmpException() : this(GenericError, "error") { }

    public QmpException(string message) : this(GenericError, message) { }

    public QmpException(string message, Exception inner) : base(message, inner) => Class = GenericError;

    public string Class { get; } = GenericError;

    /// <summary>
    /// Runs a call into Ferry's machine or device API, whose refusals (InvalidOperationException: "the guest's
    /// balloon driver has not negotiated ...", TimeoutException: "the guest did not answer ... within 10 s") are
    /// Ferry's own one-line explanations meant for the user, and relays them as GenericError. Anything else stays
    /// an internal error, so .NET's own texts never reach a client.
    /// </summary>
    public static void Relay(Action call) => Relay(() =>
    {
        call();
        return 0;
    });

    /// <inheritdoc cref="Relay(Action)"/>
    public static T Relay<T>(Func<T> call)
    {
        try
        {
            return call();
        }
        catch (Exception e) when (e is InvalidOperationException or TimeoutException)
        {
            throw new QmpException(GenericError, e.Message);
        }
    }
}
