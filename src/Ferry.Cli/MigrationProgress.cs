using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using Ferry.Control;
using Ferry.Kvm;
using Spectre.Console;

namespace Ferry.Cli;

/// <summary>
/// Follows a migration or snapshot save over QMP until its final MIGRATION event (which carries the figures, since
/// a completed source exits) and shows its progress on stderr: a Spectre.Console progress display per pass when
/// stderr is a terminal, one plain line per second otherwise, nothing with --quiet. The pass shown is the one the
/// engine is sending (MIGRATION_PASS events count the finished ones), so it matches the final table's pass numbers.
/// Ctrl-C sends migrate_cancel once (the source runs on); a second Ctrl-C ends `ferry` at once.
/// </summary>
internal sealed class MigrationProgress
{
    public enum Mode { Quiet, Plain, Live }

    private readonly QmpClient _qmp;
    private int _finishedPasses;
    private int _pass;
    private long _passBaseline;
    private volatile bool _interrupted;

    private MigrationProgress(QmpClient qmp) => _qmp = qmp;

    /// <summary>Whether Ctrl-C cancelled the job.</summary>
    public bool CancelledByUser { get; private set; }

    public static Mode ModeFor(bool quiet) => quiet ? Mode.Quiet : Console.IsErrorRedirected ? Mode.Plain : Mode.Live;

    /// <summary>Follows the job; returns its final figures (ferry-info), or null when the VM closed its socket first.</summary>
    public static (JsonObject? Final, bool CancelledByUser) Follow(QmpClient qmp, Mode mode, string what)
    {
        var follower = new MigrationProgress(qmp);
        using var sigint = PosixSignalRegistration.Create(PosixSignal.SIGINT, c =>
        {
            // The first Ctrl-C cancels the job; a second one is the default (terminate).
            c.Cancel = !follower._interrupted;
            follower._interrupted = true;
        });
        JsonObject? final;
        if (mode == Mode.Live)
        {
            var console = AnsiConsole.Create(new AnsiConsoleSettings { Out = new AnsiConsoleOutput(Console.Error) });
            final = null;
            console.Progress()
                .AutoClear(false)
                .HideCompleted(false)
                .Columns(new TaskDescriptionColumn(), new ProgressBarColumn(), new PercentageColumn(), new DownloadedColumn(), new TransferSpeedColumn(), new RemainingTimeColumn())
                .Start(context => final = follower.Loop(new LiveView(context)));
        }
        else
        {
            final = follower.Loop(mode == Mode.Plain ? new PlainView() : null);
        }
        if (follower.CancelledByUser)
            Console.Error.WriteLine($"ferry: Ctrl-C: {what} cancelled; the VM runs on");
        return (final, follower.CancelledByUser);
    }

    /// <summary>One poll's view of the pass being sent.</summary>
    internal readonly record struct PassProgress(int Pass, string Status, long DoneBytes, long? PassBytes, long TransferredBytes);

    private interface IView
    {
        void Show(PassProgress progress);

        void Finish(string status);
    }

    private JsonObject? Loop(IView? view)
    {
        while (true)
        {
            if (TakeEvents() is { } done)
            {
                view?.Finish($"{done["status"]}");
                return done;
            }
            if (_interrupted && !CancelledByUser)
            {
                CancelledByUser = true;
                TryExecute("migrate_cancel");
            }
            var now = TryExecute("query-migrate") as JsonObject;
            if (now is null)
            {
                // The source exits right after the final event; it may be waiting unread behind the close.
                _qmp.DrainEvents();
                var last = TakeEvents();
                view?.Finish($"{last?["status"]}");
                return last;
            }
            if (view is not null && Measure(now) is { } progress)
                view.Show(progress);
            Thread.Sleep(100);
        }
    }

    private JsonNode? TryExecute(string command)
    {
        try
        {
            return _qmp.Execute(command) ?? new JsonObject();
        }
        catch (IOException)
        {
            return null;
        }
    }

    /// <summary>Counts finished passes from MIGRATION_PASS; returns the final MIGRATION event's figures when it came.</summary>
    private JsonObject? TakeEvents()
    {
        JsonObject? final = null;
        foreach (var e in _qmp.Events)
        {
            var name = e["event"]?.GetValue<string>();
            if (name == "MIGRATION_PASS" && e["data"]?["pass"] is { } pass)
                _finishedPasses = (int)Math.Max(_finishedPasses, JsonNumbers.Long(pass));
            else if (name == "MIGRATION" && e["data"]?["ferry-info"] is JsonObject info)
                final = info;
        }
        _qmp.Events.Clear();
        return final;
    }

    /// <summary>
    /// The pass being sent and how far it is: pages sent, found zero or hinted free since the pass began, over the
    /// pass's pages (pass 1: RAM less the pages never touched or ballooned; later passes: query-migrate's
    /// "remaining", the dirty set the pass sends). The switch-over's final pass has no known size.
    /// </summary>
    private PassProgress? Measure(JsonObject now)
    {
        if (now["ram"] is not JsonObject ram)
            return null;
        var status = $"{now["status"]}";
        var ferry = now["ferry"];
        static long L(JsonNode? n) => JsonNumbers.Long(n);
        var handled = L(ram["normal"]) + L(ram["duplicate"]) + L(ferry?["skipped-hinted"]);
        var pass = _finishedPasses + 1;
        if (pass != _pass)
        {
            // Pass 1 starts from nothing; a later pass from what was handled when it was first seen.
            _passBaseline = pass == 1 ? 0 : handled;
            _pass = pass;
        }
        long? passPages = status == "device" ? null
            : pass == 1 ? L(ram["total"]) / (long)Page.Size - L(ferry?["skipped-untouched"]) - L(ferry?["skipped-ballooned"])
            : L(ram["remaining"]) / (long)Page.Size;
        var done = (handled - _passBaseline) * (long)Page.Size;
        long? passBytes = passPages is { } p ? Math.Max(p * (long)Page.Size, done) : null;
        return new PassProgress(pass, status, done, passBytes, L(ram["transferred"]));
    }

    private static string Mib(double bytes) => $"{bytes / (1024.0 * 1024):F1} MiB";

    /// <summary>Spectre.Console: one task per pass (the finished ones stay, completed).</summary>
    private sealed class LiveView(ProgressContext context) : IView
    {
        private ProgressTask? _task;
        private int _pass;

        public void Show(PassProgress p)
        {
            if (p.Pass != _pass || _task is null)
            {
                if (_task is not null)
                {
                    _task.Value = _task.MaxValue;
                    _task.StopTask();
                }
                _task = context.AddTask($"pass {p.Pass}", maxValue: Math.Max(1, p.PassBytes ?? 1));
                _pass = p.Pass;
            }
            _task.Description = p.Status == "device" ? $"pass {p.Pass} (switch-over)" : $"pass {p.Pass}";
            _task.IsIndeterminate = p.PassBytes is null;
            if (p.PassBytes is { } total)
                _task.MaxValue = Math.Max(1, total);
            _task.Value = p.DoneBytes;
            context.Refresh();
        }

        public void Finish(string status)
        {
            if (_task is null)
                return;
            if (status == "completed")
            {
                _task.IsIndeterminate = false;
                _task.Value = _task.MaxValue;
            }
            _task.Description = $"pass {_pass}: {status}";
            _task.StopTask();
            context.Refresh();
        }
    }

    /// <summary>Not a terminal: one line per second with the same figures.</summary>
    private sealed class PlainView : IView
    {
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private TimeSpan _lastLine = TimeSpan.MinValue;
        private long _lastDone;
        private int _lastPass;

        public void Show(PassProgress p)
        {
            var now = _clock.Elapsed;
            if (_lastLine != TimeSpan.MinValue && now - _lastLine < TimeSpan.FromSeconds(1))
                return;
            var seconds = _lastLine == TimeSpan.MinValue ? now.TotalSeconds : (now - _lastLine).TotalSeconds;
            var rate = (p.Pass == _lastPass ? p.DoneBytes - _lastDone : p.DoneBytes) / Math.Max(seconds, 1e-3);
            (_lastLine, _lastDone, _lastPass) = (now, p.DoneBytes, p.Pass);
            var of = p.PassBytes is { } total
                ? $"{100.0 * p.DoneBytes / Math.Max(1, total),5:F1}% of {Mib(total)}, {Mib(rate)}/s, ETA {Eta(total - p.DoneBytes, rate)}"
                : $"{Mib(p.DoneBytes)} sent, {Mib(rate)}/s";
            Console.Error.WriteLine($"ferry: {p.Status} pass {p.Pass}: {of}; {Mib(p.TransferredBytes)} transferred in all");
        }

        public void Finish(string status)
        {
        }

        private static string Eta(long bytes, double rate) =>
            rate <= 0 ? "-" : TimeSpan.FromSeconds(Math.Min(bytes / rate, 359999)).ToString(@"h\:mm\:ss", System.Globalization.CultureInfo.InvariantCulture);
    }
}
