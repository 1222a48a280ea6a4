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
}
