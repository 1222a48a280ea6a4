using Ferry.Migration.Engine;
using Xunit;

namespace Ferry.Migration.Tests;

/// <summary>The parameter and capability tables drive the typed records' defaults and their validation.</summary>
public sealed class MigrationParameterTableTests
{
    public static TheoryData<string> ParameterNames() => [.. MigrationParameterTable.All.Select(p => p.Name)];

    private static MigrationParameter Parameter(string name) => MigrationParameterTable.Find(name)!;

    [Theory]
    [MemberData(nameof(ParameterNames))]
    public void Validate_refuses_one_below_the_minimum_naming_the_value(string name)
    {
        var parameter = Parameter(name);
        var bad = parameter.Min - 1;
        var e = Assert.Throws<ArgumentException>(() => parameter.Set(new MigrationParameters(), bad).Validate());
        Assert.StartsWith($"{name} {bad} is ", e.Message, StringComparison.Ordinal);
        Assert.Equal(parameter.Check(bad), e.Message);
        parameter.Set(new MigrationParameters(), parameter.Min).Validate();
    }

    [Theory]
    [MemberData(nameof(ParameterNames))]
    public void Validate_refuses_one_above_the_maximum_naming_the_value(string name)
    {
        var parameter = Parameter(name);
        parameter.Set(new MigrationParameters(), parameter.Max).Validate();
        if (parameter.Max == long.MaxValue)
            return; // no upper bound
        var bad = parameter.Max + 1;
        var e = Assert.Throws<ArgumentException>(() => parameter.Set(new MigrationParameters(), bad).Validate());
        Assert.Equal($"{name} {bad} is outside {parameter.Min}..{parameter.Max}{(name == "downtime-limit" ? " ms" : "")}", e.Message);
    }

    [Theory]
    [InlineData("max-bandwidth", -1, "max-bandwidth -1 is negative")]
    [InlineData("downtime-limit", 0, "downtime-limit 0 is outside 1..2000000 ms")]
    [InlineData("multifd-channels", 65, "multifd-channels 65 is outside 1..64")]
    [InlineData("cpu-throttle-initial", 100, "cpu-throttle-initial 100 is outside 1..99")]
    [InlineData("cpu-throttle-increment", 0, "cpu-throttle-increment 0 is outside 1..99")]
    [InlineData("max-cpu-throttle", 0, "max-cpu-throttle 0 is outside 1..99")]
    [InlineData("throttle-trigger-threshold", 101, "throttle-trigger-threshold 101 is outside 1..100")]
    [InlineData("ferry-hint-budget-ms", 60001, "ferry-hint-budget-ms 60001 is outside 0..60000")]
    [InlineData("ferry-switchover-timeout-ms", 99, "ferry-switchover-timeout-ms 99 is outside 100..600000")]
    public void Messages_are_the_ones_users_already_see(string name, long value, string message) =>
        Assert.Equal(message, Assert.Throws<ArgumentException>(() => Parameter(name).Set(new MigrationParameters(), value).Validate()).Message);

    [Fact]
    public void The_records_defaults_are_the_tables()
    {
        var parameters = new MigrationParameters();
        parameters.Validate();
        foreach (var parameter in MigrationParameterTable.All)
            Assert.Equal(parameter.Default, parameter.Get(parameters));
        var capabilities = new MigrationCapabilities();
        foreach (var capability in MigrationCapabilityTable.All)
            Assert.Equal(capability.Default, capability.Get(capabilities));
    }

    [Fact]
    public void Each_entry_reads_and_writes_its_own_field()
    {
        foreach (var parameter in MigrationParameterTable.All)
        {
            var value = parameter.Default == parameter.Min ? parameter.Min + 1 : parameter.Min;
            var changed = parameter.Set(new MigrationParameters(), value);
            Assert.Equal(value, parameter.Get(changed));
            foreach (var other in MigrationParameterTable.All.Where(o => o != parameter))
                Assert.Equal(other.Default, other.Get(changed));
        }
        foreach (var capability in MigrationCapabilityTable.All)
        {
            var changed = capability.Set(new MigrationCapabilities(), !capability.Default);
            Assert.Equal(!capability.Default, capability.Get(changed));
            foreach (var other in MigrationCapabilityTable.All.Where(o => o != capability))
                Assert.Equal(other.Default, other.Get(changed));
        }
    }

    [Fact]
    public void Names_are_unique_and_every_entry_is_documented()
    {
        Assert.Equal(MigrationParameterTable.All.Count, MigrationParameterTable.All.Select(p => p.Name).Distinct().Count());
        Assert.Equal(MigrationCapabilityTable.All.Count, MigrationCapabilityTable.All.Select(c => c.Name).Distinct().Count());
        Assert.All(MigrationParameterTable.All, p => Assert.False(string.IsNullOrWhiteSpace(p.Doc)));
        Assert.All(MigrationCapabilityTable.All, c => Assert.False(string.IsNullOrWhiteSpace(c.Doc)));
        Assert.All(MigrationParameterTable.All, p => Assert.InRange(p.Default, p.Min, p.Max));
    }

    [Fact]
    public void The_docs_table_says_what_the_code_table_says()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Ferry.sln")))
            dir = dir.Parent;
        Assert.NotNull(dir);
        var rows = File.ReadAllLines(Path.Combine(dir.FullName, "docs", "migration.md"));
        string Row(string name) => Assert.Single(rows, r => r.StartsWith($"| `{name}` |", StringComparison.Ordinal));
        foreach (var p in MigrationParameterTable.All)
        {
            var cells = Row(p.Name).Split('|', StringSplitOptions.TrimEntries);
            Assert.Equal(p.Max == long.MaxValue ? $"≥ {p.Min}" : $"{p.Min}..{p.Max}", cells[3]);
            if (p != MigrationParameterTable.MultifdChannels) // default: one per core
                Assert.Equal($"{p.Default}", cells[4]);
            if (p.CliOption is null)
                Assert.Equal("", cells[5]);
            else
                Assert.StartsWith($"`--{p.CliOption} ", cells[5], StringComparison.Ordinal);
        }
        foreach (var c in MigrationCapabilityTable.All)
        {
            var cells = Row(c.Name).Split('|', StringSplitOptions.TrimEntries);
            Assert.Equal(c.Default ? "on" : "off", cells[2]);
            Assert.Equal(c.CliFlag is null ? "" : $"`--{c.CliFlag}`", cells[3]);
        }
    }
}
