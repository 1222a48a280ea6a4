namespace Ferry.Cli;

/// <summary>A command line that Ferry cannot use; the message names the bad word. Exit code <see cref="ExitCode.Usage"/>.</summary>
public sealed class UsageException : Exception
{
    public UsageException() { }

    public UsageException(string message) : base(message) { }

    public UsageException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A runtime failure already worded for the user (one line). Exit code <see cref="ExitCode.Failure"/> unless given.</summary>
public sealed class CliFailureException : Exception
{
    public CliFailureException() { }

    public CliFailureException(string message) : base(message) { }

    public CliFailureException(string message, Exception inner) : base(message, inner) { }

    public CliFailureException(string message, ExitCode code, Exception? inner = null) : base(message, inner) => Code = code;

    public ExitCode Code { get; } = ExitCode.Failure;
}
