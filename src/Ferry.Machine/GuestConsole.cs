using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Ferry.Devices.Legacy;

namespace Ferry.Machine;

/// <summary>
/// The guest's console as lines: output is split into lines (optionally echoed to a writer), input is sent a line
/// at a time. Commands to the guest shell get their one-line JSON reply back.
/// </summary>
public sealed class GuestConsole : ISerialOutput
{
    private readonly Channel<string> _lines = Channel.CreateUnbounded<string>(new UnboundedChannelOptions { SingleReader = true });
    private readonly StringBuilder _partial = new();
    private readonly Lock _lock = new();
    private readonly TextWriter? _echo;
    private Action<byte[]>? _input;

    public GuestConsole(TextWriter? echo = null) => _echo = echo;

    /// <summary>Every line the guest printed, in order (for diagnostics).</summary>
    public List<string> Transcript { get; } = [];

    /// <summary>Where typed lines go: a Ferry machine's UART, or another VMM's serial port (QEMU's stdin).</summary>
    public void AttachInput(Action<byte[]> input) => _input = input;

    public void Write(ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            foreach (var b in data)
            {
                if (b == '\n')
                {
                    var line = _partial.ToString().TrimEnd('\r');
                    _partial.Clear();
                    Transcript.Add(line);
                    _echo?.WriteLine(line);
                    _lines.Writer.TryWrite(line);
                }
                else
                {
                    _partial.Append((char)b);
                }
            }
        }
    }

    public void SendLine(string line)
    {
        var input = _input ?? throw new InvalidOperationException("console is not attached to a machine");
        input(Encoding.ASCII.GetBytes(line + "\n"));
    }

    public async Task<string> ReadLineAsync(TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            return await _lines.Reader.ReadAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            throw new TimeoutException($"no line from the guest within {timeout.TotalSeconds:0.#} s; last lines: {string.Join(" | ", Transcript.TakeLast(3))}");
        }
    }

    /// <summary>Waits for a JSON line whose "event" is <paramref name="name"/>; other lines are skipped.</summary>
    public async Task<JsonElement> WaitForEventAsync(string name, TimeSpan timeout)
    {
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            var line = await ReadLineAsync(left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(1)).ConfigureAwait(false);
            if (TryParse(line, out var json) && json.TryGetProperty("event", out var e) && e.GetString() == name)
                return json;
        }
    }

    /// <summary>Sends a shell command and returns its JSON reply (the next line that has "cmd").</summary>
    public async Task<JsonElement> CommandAsync(string command, TimeSpan? timeout = null)
    {
        var limit = timeout ?? TimeSpan.FromSeconds(60);
        SendLine(command);
        var deadline = DateTime.UtcNow + limit;
        while (true)
        {
            var left = deadline - DateTime.UtcNow;
            var line = await ReadLineAsync(left > TimeSpan.Zero ? left : TimeSpan.FromMilliseconds(1)).ConfigureAwait(false);
            if (TryParse(line, out var json) && json.TryGetProperty("cmd", out _))
                return json;
        }
    }

    private static bool TryParse(string line, out JsonElement json)
    {
        json = default;
        if (!line.StartsWith('{'))
            return false;
        try
        {
            using var doc = JsonDocument.Parse(line);
            json = doc.RootElement.Clone();
            return true;
        }
        catch (JsonException)
        {
            return false;
        }
    }
}
