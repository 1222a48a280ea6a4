using System.Text.Json;
using Ferry.Machine;
using Xunit;

namespace Ferry.TestSupport;

/// <summary>A machine running Ferry's guest, booted to its shell, with its console as JSON commands.</summary>
public sealed class BootedGuest : IDisposable
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(120);

    private BootedGuest(GuestMachine machine, GuestConsole console, JsonElement ready)
    {
        Machine = machine;
        Console = console;
        Ready = ready;
    }

    public GuestMachine Machine { get; }

    public GuestConsole Console { get; }

    /// <summary>The guest's "ready" event.</summary>
    public JsonElement Ready { get; }

    public static async Task<BootedGuest> StartAsync(ulong memoryMib = 256, int cpus = 1, string commandLine = "", bool balloon = true)
    {
        var console = new GuestConsole();
        var config = new MachineConfig
        {
            MemoryBytes = memoryMib * GuestLayout.MiB,
            Cpus = cpus,
            GuestImagePath = GuestImageLocator.Locate(),
            CommandLine = commandLine,
            Balloon = balloon,
        };
        var machine = GuestMachine.Create(config, console);
        try
        {
            machine.Start();
            var ready = console.WaitForEventAsync("ready", Timeout);
            var first = await Task.WhenAny(ready, machine.Exited);
            if (first != ready)
                Assert.Fail($"guest stopped before it was ready: {machine.Exited.Result.Message}; console: {string.Join(" | ", console.Transcript)}");
            return new BootedGuest(machine, console, await ready);
        }
        catch
        {
            machine.Dispose();
            throw;
        }
    }

    /// <summary>Runs a shell command and asserts that the guest accepted it.</summary>
    /// <summary>Wraps a machine that was not booted here (e.g. the destination of a migration) for guest commands.</summary>
    public static BootedGuest Adopt(GuestMachine machine, GuestConsole console) => new(machine, console, default);

    public async Task<JsonElement> Cmd(string command)
    {
        var reply = await Console.CommandAsync(command, Timeout);
        Assert.True(reply.GetProperty("ok").GetBoolean(), $"guest command '{command}' failed: {reply}");
        return reply;
    }

    public void Dispose() => Machine.Dispose();
}
