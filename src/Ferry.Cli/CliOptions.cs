using System.CommandLine;
using System.CommandLine.Parsing;
using System.Globalization;
using Ferry.Machine;

namespace Ferry.Cli;

/// <summary>
/// Option and argument kinds the commands share. Values are checked while parsing, so a bad one is a parse error
/// (exit <see cref="ExitCode.Usage"/>) with a message naming it, whatever the option.
/// </summary>
internal static class CliOptions
{
    public static Option<string?> Text(string name, string helpName, string description) =>
        new(name) { HelpName = helpName, Description = description };

    public static Option<bool> Flag(string name, string description) => new(name) { Description = description };

    /// <summary>A size: 512M, 1.5G, 8GiB; a bare number is MiB (as QEMU's -m and HMP balloon).</summary>
    /// <remarks>Defaults stay in the description ("default 512M"): the caller applies them, so help shows the size as written.</remarks>
    public static Option<ulong?> Size(string name, string description) =>
        new(name) { HelpName = "SIZE", Description = description, CustomParser = r => ParseSize(r, name) };

    /// <summary>A size argument (e.g. the balloon's guest size).</summary>
    public static Argument<ulong?> SizeArgument(string name, string helpName, string description) =>
        new(name) { HelpName = helpName, Description = description, CustomParser = r => ParseSize(r, helpName) };

    /// <summary>A whole number of at least 1; <paramref name="what"/> names it in errors ("whole number", "number of milliseconds").</summary>
    public static Option<long?> Positive(string name, string helpName, string description, string what = "whole number") =>
        new(name)
        {
            HelpName = helpName,
            Description = description,
            CustomParser = r =>
            {
                if (r.Tokens.Count == 0)
                    return null;
                var text = r.Tokens[0].Value;
                if (long.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out var value) && value > 0)
                    return value;
                r.AddError($"{name} '{text}' is not a positive {what}");
                return null;
            },
        };

    /// <summary>The running VM's QMP socket, unix:PATH; the value is the path.</summary>
    public static Argument<string> Socket() => new("unix:SOCK")
    {
        Description = "the running VM's QMP socket (its `ferry run --qmp unix:PATH`)",
        CustomParser = r =>
        {
            var text = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (text.StartsWith("unix:", StringComparison.Ordinal) && text.Length > 5)
                return text[5..];
            r.AddError($"'{text}' is not the QMP socket: the first argument must be unix:PATH");
            return "";
        },
    };

    public static Argument<string> Word(string name, string description) => new(name) { Description = description };

    /// <summary>Accepts only the listed words, naming the bad one and the choices.</summary>
    public static Argument<string> Choice(string name, string description, params string[] choices)
    {
        var argument = Word(name, description);
        argument.CompletionSources.Add(choices);
        argument.Validators.Add(r =>
        {
            var value = r.Tokens.Count > 0 ? r.Tokens[0].Value : "";
            if (!choices.Contains(value, StringComparer.Ordinal))
                r.AddError($"'{value}' is not {string.Join(", ", choices[..^1])} or {choices[^1]}");
        });
        return argument;
    }

    /// <summary>A size token (null when absent); a bad one becomes a parse error naming it.</summary>
    /// <summary>A value parsed by <paramref name="parse"/>; its ConfigException becomes the parse error (exit 2).</summary>
    public static T? Parsed<T>(ArgumentResult r, Func<string, T> parse) where T : struct
    {
        if (r.Tokens.Count == 0)
            return null;
        try
        {
            return parse(r.Tokens[0].Value);
        }
        catch (ConfigException e)
        {
            r.AddError(e.Message);
            return null;
        }
    }

    public static ulong? ParseSize(ArgumentResult r, string name)
    {
        if (r.Tokens.Count == 0)
            return null;
        try
        {
            return MachineConfig.ParseSize(r.Tokens[0].Value, name);
        }
        catch (ConfigException e)
        {
            r.AddError(e.Message);
            return null;
        }
    }
}
