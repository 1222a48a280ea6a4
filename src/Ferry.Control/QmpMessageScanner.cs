using System.Buffers;

namespace Ferry.Control;

/// <summary>One complete message from <see cref="QmpMessageScanner"/>, or the error that replaced one.</summary>
internal readonly record struct QmpScanned(byte[]? Message, string? Error);

/// <summary>
/// Finds where each QMP message ends in a byte stream, the way QEMU's json-streamer does: it tracks nesting
/// ({ [ versus } ]), strings and escapes, and a message ends when the nesting returns to zero. Newlines mean
/// nothing, so a client may send messages with or without them, several in one write, or one split across many
/// (QEMU's own Python client sends no newline at all). Only the boundaries are found here; each complete message
/// is then parsed by System.Text.Json.
///
/// Limits (docs/qmp.md): a message is at most <see cref="MaxMessageBytes"/> and nests at most
/// <see cref="MaxDepth"/> deep. Past either, the scanner reports QEMU's error once and then, as QEMU's streamer
/// does, discards input until the nesting balances again, holding no more than counters meanwhile. A control
/// character (other than tab, CR, LF) or a 0xFE/0xFF byte anywhere is a lexical error: the message in progress is
/// dropped and input is skipped to the next newline or '{', which is how the QMP spec tells a client to force the
/// parser back into a known state.
/// </summary>
internal sealed class QmpMessageScanner
{
    /// <summary>QEMU allows 64 MiB; no QMP request Ferry accepts comes near 1 MiB.</summary>
    public const int MaxMessageBytes = 1 << 20;

    /// <summary>QEMU allows 1024; Ferry's deepest request nests 3 deep. Also System.Text.Json's depth bound.</summary>
    public const int MaxDepth = 64;

    private enum Mode
    {
        /// <summary>Between messages: whitespace is skipped.</summary>
        Idle,
        /// <summary>Inside an object or array (depth &gt; 0), outside a string.</summary>
        Structure,
        /// <summary>Inside a string, at any depth.</summary>
        String,
        /// <summary>A top-level scalar (number, keyword, junk) that ends at whitespace or a structural character.</summary>
        Bare,
        /// <summary>Over a limit: counting nesting only, until it balances.</summary>
        Discard,
        /// <summary>After a lexical error: skipping to a newline or '{'.</summary>
        Recover,
    }

    private readonly ArrayBufferWriter<byte> _message = new();
    private Mode _mode = Mode.Idle;
    private long _depth;
    private bool _escaped;
    private bool _discardInString;

    /// <summary>Scans <paramref name="data"/>, adding each message (or error) completed by it to <paramref name="output"/>.</summary>
    public void Feed(ReadOnlySpan<byte> data, List<QmpScanned> output)
    {
        for (var i = 0; i < data.Length; i++)
        {
            var b = data[i];
            if (IsLexicalError(b) && _mode != Mode.Recover)
            {
                output.Add(new QmpScanned(null, $"JSON parse error, stray '{Stray(b)}'"));
                Reset(Mode.Recover);
                continue;
            }
            switch (_mode)
            {
                case Mode.Recover:
                    if (b == (byte)'\n')
                        _mode = Mode.Idle;
                    else if (b == (byte)'{')
                        Begin(b, Mode.Structure);
                    break;
                case Mode.Idle:
                    if (b is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n')
                        break;
                    if (b is (byte)'{' or (byte)'[')
                        Begin(b, Mode.Structure);
                    else if (b == (byte)'"')
                        Begin(b, Mode.String);
                    else if (b is (byte)'}' or (byte)']' or (byte)',' or (byte)':')
                    {
                        // A stray structural character is a message of its own; parsing it gives the error.
                        Begin(b, Mode.Idle);
                        Complete(output);
                    }
                    else
                        Begin(b, Mode.Bare);
                    break;
                case Mode.Bare:
                    if (b is (byte)' ' or (byte)'\t' or (byte)'\r' or (byte)'\n' or (byte)'{' or (byte)'[' or (byte)'}' or (byte)']' or (byte)',' or (byte)':' or (byte)'"')
                    {
                        Complete(output);
                        i--; // the delimiter belongs to what comes next
                    }
                    else
                        Append(b, output);
                    break;
                case Mode.String:
                    Append(b, output);
                    if (_mode != Mode.String)
                        break;
                    if (_escaped)
                        _escaped = false;
                    else if (b == (byte)'\\')
                        _escaped = true;
                    else if (b == (byte)'"')
                    {
                        _mode = _depth == 0 ? Mode.Idle : Mode.Structure;
                        if (_depth == 0)
                            Complete(output);
                    }
                    break;
                case Mode.Structure:
                    Append(b, output);
                    if (_mode != Mode.Structure)
                        break;
                    if (b == (byte)'"')
                        _mode = Mode.String;
                    else if (b is (byte)'{' or (byte)'[')
                    {
                        if (++_depth > MaxDepth)
                            Abandon("JSON nesting depth limit exceeded", output);
                    }
                    else if (b is (byte)'}' or (byte)']' && --_depth == 0)
                    {
                        _mode = Mode.Idle;
                        Complete(output);
                    }
                    break;
                case Mode.Discard:
                    if (_discardInString)
                    {
                        if (_escaped)
                            _escaped = false;
                        else if (b == (byte)'\\')
                            _escaped = true;
                        else if (b == (byte)'"')
                            _discardInString = false;
                    }
                    else if (b == (byte)'"')
                        _discardInString = true;
                    else if (b is (byte)'{' or (byte)'[')
                        _depth++;
                    else if (b is (byte)'}' or (byte)']' && --_depth == 0)
                        Reset(Mode.Idle);
                    break;
            }
        }
    }

    /// <summary>Bytes held for the message in progress (bounded by <see cref="MaxMessageBytes"/>).</summary>
    public int PendingBytes => _message.WrittenCount;

    private static bool IsLexicalError(byte b) => (b < 0x20 && b is not ((byte)'\t' or (byte)'\r' or (byte)'\n')) || b >= 0xFE;

    /// <summary>The offending byte, spelled so the error text stays printable.</summary>
    private static string Stray(byte b) => b < 0x20 ? $"\\u{b:X4}" : $"\\x{b:X2}";

    private void Begin(byte b, Mode mode)
    {
        _message.ResetWrittenCount();
        _escaped = false;
        _depth = b is (byte)'{' or (byte)'[' ? 1 : 0;
        _mode = mode;
        _message.GetSpan(1)[0] = b;
        _message.Advance(1);
    }

    private void Append(byte b, List<QmpScanned> output)
    {
        if (_mode == Mode.String && b == (byte)'\n')
        {
            // A raw newline inside a string is a lexical error in JSON (outside one it is whitespace): what follows
            // is the rest of a broken message, so skip it like any other lexical error.
            output.Add(new QmpScanned(null, "JSON parse error, stray '\\u000A'"));
            Reset(Mode.Recover);
            return;
        }
        if (_message.WrittenCount >= MaxMessageBytes)
        {
            Abandon("JSON token size limit exceeded", output);
            // The byte that went over the limit still counts for nesting.
            if (_mode == Mode.Discard)
                Feed([b], output);
            return;
        }
        _message.GetSpan(1)[0] = b;
        _message.Advance(1);
    }

    /// <summary>Reports a limit once, then discards until the nesting balances (at once for a top-level scalar).</summary>
    private void Abandon(string error, List<QmpScanned> output)
    {
        output.Add(new QmpScanned(null, error));
        var inString = _mode == Mode.String;
        var (depth, escaped) = (_depth, _escaped);
        Reset(depth == 0 ? Mode.Recover : Mode.Discard);
        (_depth, _escaped) = (depth, escaped);
        _discardInString = inString;
    }

    private void Complete(List<QmpScanned> output)
    {
        output.Add(new QmpScanned(_message.WrittenSpan.ToArray(), null));
        Reset(Mode.Idle);
    }

    private void Reset(Mode mode)
    {
        _message.ResetWrittenCount();
        _mode = mode;
        _depth = 0;
        _escaped = false;
        _discardInString = false;
    }
}
