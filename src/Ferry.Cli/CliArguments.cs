using System.Globalization;

namespace Ferry.Cli;

/// <summary>A command line that Ferry cannot use; the message names the bad word.</summary>
public sealed class UsageException : Exception
{
    public UsageException() { }

    public UsageException(string message) : base(message) { }

    public UsageException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// A small "--name value" parser: every option is declared, unknown ones are errors naming the word, values are
/// required where declared. Hand-written so each error is one line that names the bad value.
/// </summary>
public sealed class CliArguments
{
    private readonly Dictionary<string, string?> _values = new(StringComparer.Ordinal);
    private readonly List<string> _positional = [];

    private CliArguments() { }

    public IReadOnlyList<string> Positional => _positional;

    /// <param name="options">Option names (without "--") that take a value.</param>
    /// <param name="flags">Option names that take no value.</param>
    public static CliArguments Parse(IEnumerable<string> args, string command, IReadOnlyCollection<string> options, IReadOnlyCollection<string> flags)
    {
        var result = new CliArguments();
        using var e = args.GetEnumerator();
        while (e.MoveNext())
        {
            var word = e.Current;
            if (!word.StartsWith("--", StringComparison.Ordinal) || word == "--")
            {
                result._positional.Add(word);
                continue;
            }
            var name = word[2..];
            string? inline = null;
            var eq = name.IndexOf('=', StringComparison.Ordinal);
            if (eq >= 0)
            {
                inline = name[(eq + 1)..];
                name = name[..eq];
            }
            if (flags.Contains(name))
            {
                if (inline is not null)
                    throw new UsageException($"ferry {command}: option --{name} takes no value (got '{inline}')");
                result._values[name] = null;
            }
            else if (options.Contains(name))
            {
                if (inline is null)
                {
                    if (!e.MoveNext())
                        throw new UsageException($"ferry {command}: option --{name} needs a value");
                    inline = e.Current;
                }
                result._values[name] = inline;
            }
            else
            {
                throw new UsageException($"ferry {command}: unknown option '{word}' (see 'ferry help')");
            }
        }
        return result;
    }

    public bool Has(string name) => _values.ContainsKey(name);

    public string? Get(string name) => _values.TryGetValue(name, out var v) ? v : null;

    public int GetInt(string name, int fallback)
    {
        var text = Get(name);
        if (text is null)
            return fallback;
        if (!int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
            throw new UsageException($"--{name} '{text}' is not a whole number");
        return value;
    }
}
