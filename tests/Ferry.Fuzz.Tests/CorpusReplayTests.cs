using Xunit;

namespace Ferry.Fuzz.Tests;

/// <summary>
/// Every file of fuzz/corpus/TARGET (seeds, the afl queue entries kept, and the inputs of bugs fuzzing found) goes
/// through the same harness afl drives, in process: no crash, no unexpected exception, no oracle failure.
/// </summary>
public sealed class CorpusReplayTests
{
    public static string CorpusDirectory { get; } = FindCorpus();

    private static string FindCorpus()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            var candidate = Path.Combine(dir.FullName, "fuzz", "corpus");
            if (Directory.Exists(candidate))
                return candidate;
        }
        throw new DirectoryNotFoundException($"fuzz/corpus not found above {AppContext.BaseDirectory}");
    }

    public static TheoryData<string> TargetNames() => [.. Targets.All.Keys];

    [Theory]
    [MemberData(nameof(TargetNames))]
    public void Every_corpus_file_runs_through_its_harness(string target)
    {
        var files = Directory.GetFiles(Path.Combine(CorpusDirectory, target)).Order(StringComparer.Ordinal).ToArray();
        Assert.NotEmpty(files);
        var failures = new List<string>();
        foreach (var file in files)
        {
            try
            {
                Targets.All[target](File.ReadAllBytes(file));
            }
            catch (Exception e)
            {
                failures.Add($"{Path.GetFileName(file)}: {e.GetType().Name}: {e.Message}");
            }
        }
        Assert.True(failures.Count == 0, $"{failures.Count} of {files.Length} {target} inputs failed:\n{string.Join('\n', failures)}");
    }

    [Fact]
    public void The_seeds_in_the_repository_are_the_generator_s()
    {
        foreach (var (target, name, bytes) in Seeds.All())
        {
            var path = Path.Combine(CorpusDirectory, target, name);
            Assert.True(File.Exists(path), $"{target}/{name} is missing: run `Ferry.Fuzz seeds fuzz/corpus`");
            Assert.True(bytes.AsSpan().SequenceEqual(File.ReadAllBytes(path)), $"{target}/{name} differs from what the generator writes");
        }
    }

    [Fact]
    public void Replay_of_a_regression_file_runs_its_harness()
    {
        // Guards the replay itself: a harness that rejects everything would make the corpus test meaningless.
        var snapshot = Seeds.All().First(s => s.Target == "snapshot").Bytes;
        SnapshotTarget.Run(snapshot);
    }

    [Fact]
    public void Qmp_regression_duplicate_argument_keys_get_a_JSON_error_not_an_ArgumentException()
    {
        // Found by the qmp harness: {"max-bandwidth":1,"max-bandwidth":2} parsed, and the handler's first look at
        // its arguments threw ArgumentException ("An item with the same key has already been added"), which the
        // dispatcher passed on as a GenericError carrying a .NET message. The parser now refuses duplicate keys.
        QmpTarget.Run(File.ReadAllBytes(Path.Combine(CorpusDirectory, "qmp", "regress-duplicate-argument-keys")));
    }
}
