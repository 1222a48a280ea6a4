using Ferry.Devices.Virtio.Balloon;
using Ferry.Kvm;
using Ferry.Machine;
using Ferry.Migration.Engine;
using Ferry.Migration.Stream;
using Microsoft.Extensions.Logging;

namespace Ferry.Migration.Machines;

/// <summary>A running <see cref="GuestMachine"/> as the source of a migration.</summary>
public sealed class MachineMigrationSource(GuestMachine machine) : IMigrationSource
{
    private readonly BalloonView? _balloon = machine.Balloon is { } device ? new BalloonView(device, machine.Memory) : null;

    public IReadOnlyList<RamBlock> Blocks => machine.Memory.Blocks;

    public bool IsPaused => machine.Status != MachineStatus.Running;

    public IMigrationBalloon? Balloon => _balloon;

    public void SetDirtyLogging(bool enabled) => machine.Vm.SetDirtyLogging(enabled);

    public void SyncDirtyLog(int block, PageSet into) => machine.Vm.SyncDirtyLog(machine.Memory.Blocks[block], into);

    public void PauseGuest() => machine.Pause();

    public void ResumeGuest() => machine.Resume();

    public void SetThrottle(int percent) => machine.SetThrottle(percent);

    public IReadOnlyList<StateSection> SaveState() => MachineState.Save(machine);

    /// <summary>
    /// The first state save of a machine cost 8-12 ms on these hosts, nearly all one-time work (choosing the MSRs,
    /// compiling the codec), then 0.3 ms. The vCPUs cannot be read while they run, so this does the rest: the MSR
    /// choice, a synthetic vCPU state through the codec, and the devices' own state (read under their locks).
    /// </summary>
    public void PrepareSwitchover()
    {
        var msrs = machine.PrepareStateCapture();
        var synthetic = new VcpuState { Xsave = new byte[4096], Msrs = [.. msrs.Select(index => new Ferry.Interop.Kvm.KvmMsrEntry { Index = index })] };
        _ = VcpuStateCodec.Decode(VcpuStateCodec.Encode(synthetic));
        if (machine.Balloon is not null)
        {
            _ = machine.BalloonTransport!.SaveState();
            _ = machine.Balloon.SaveState();
        }
    }

    private sealed class BalloonView : IMigrationBalloon
    {
        private readonly BalloonDevice _device;
        private readonly GuestMemory _memory;
        private Action<int, ulong, ulong>? _hinted;
        private Action<int, ulong, ulong>? _discarded;

        public BalloonView(BalloonDevice device, GuestMemory memory)
        {
            _device = device;
            _memory = memory;
            _device.FreePageHinted += hint =>
            {
                var index = IndexOf(hint.Block);
                if (index >= 0)
                    _hinted?.Invoke(index, hint.Offset, hint.Length);
            };
            _device.PagesDiscarded += (block, offset, length) =>
            {
                var index = IndexOf(block);
                if (index >= 0)
                    _discarded?.Invoke(index, offset, length);
            };
        }

        public bool DriverReady => _device.DriverReady;

        public bool MustTellHost => _device.DriverReady && _device.MustTellHost;

        public bool CanHint => _device.DriverReady && _device.Has(BalloonDevice.FREE_PAGE_HINT);

        public uint PoisonValue => _device.Has(BalloonDevice.PAGE_POISON) ? _device.PoisonValue : 0;

        public event Action<int, ulong, ulong>? Hinted
        {
            add => _hinted += value;
            remove => _hinted -= value;
        }

        public event Action<int, ulong, ulong>? Discarded
        {
            add => _discarded += value;
            remove => _discarded -= value;
        }

        public bool HintRunFinishedByGuest => _device.HintStatus.State is FreePageHintState.Stopped or FreePageHintState.Done;

        public void CopyBalloonBitmap(int block, PageSet into) => into.CopyFrom(_device.BalloonBitmap(_memory.Blocks[block]));

        public void StartHinting() => _device.StartFreePageHinting();

        public void StopHinting() => _device.StopFreePageHinting();

        public void FinishHinting() => _device.FinishFreePageHinting();

        private int IndexOf(RamBlock block)
        {
            for (var i = 0; i < _memory.Blocks.Count; i++)
            {
                if (ReferenceEquals(_memory.Blocks[i], block))
                    return i;
            }
            return -1;
        }
    }
}

/// <summary>A freshly created machine, started paused, as the destination of a migration or a restore.</summary>
public sealed partial class MachineMigrationTarget(GuestMachine machine) : IMigrationTarget
{
    private readonly Lazy<UserfaultPostcopyMemory?> _postcopy = new(() => CreatePostcopyMemory(machine));

    public IReadOnlyList<RamBlock> Blocks => machine.Memory.Blocks;

    /// <summary>
    /// The machine's memory demand-paged for postcopy (<see cref="UserfaultPostcopyMemory"/>); null, and postcopy
    /// declined, where userfaultfd cannot page it (the reason is logged). A block whose pages cannot all be placed
    /// stops the machine (exit as a host memory fault): its vCPUs must not run on without them.
    /// </summary>
    public IPostcopyMemory? Postcopy => _postcopy.Value;

    private static UserfaultPostcopyMemory? CreatePostcopyMemory(GuestMachine machine)
    {
        if (UserfaultPostcopyMemory.Unavailable(machine.Memory.Blocks) is { } reason)
        {
            LogPostcopyUnavailable(machine.Loggers.CreateLogger("Ferry.Migration"), reason);
            return null;
        }
        var memory = new UserfaultPostcopyMemory(machine.Memory.Blocks, machine.Config.Cpus, tid =>
        {
            var runners = machine.Runners;
            for (var i = 0; i < runners.Count; i++)
            {
                if (runners[i].ThreadId == tid)
                    return runners[i].Vcpu.Index;
            }
            return -1;
        });
        memory.Failed += message => machine.StopOnMemoryFault($"postcopy: {message}");
        return memory;
    }

    [LoggerMessage(Level = LogLevel.Warning, Message = "postcopy is declined on this destination: {Reason}")]
    private static partial void LogPostcopyUnavailable(ILogger logger, string reason);

    public void ApplyBalloonBitmap(int block, ulong firstPage, ReadOnlySpan<byte> bitmap)
    {
        var ramBlock = machine.Memory.Blocks[block];
        if (machine.Balloon is null)
            throw new InvalidDataException("the stream carries a balloon bitmap but this machine has no balloon (start it with the source's configuration)");
        machine.Balloon.ApplyBalloonBitmap(ramBlock, firstPage, bitmap);
        // Ballooned pages hold nothing: make them holes, one punch per run.
        foreach (var run in PageSet.RunsIn(bitmap, firstPage))
            ramBlock.Discard(run.Start << Page.Shift, run.Length << Page.Shift);
    }

    public void RestoreState(IReadOnlyList<StateSection> sections) => MachineState.Restore(machine, sections);

    public void ResumeGuest() => machine.Resume();

    /// <summary>
    /// The destination has not run yet, so its own vCPU state can make the whole round trip that the incoming state
    /// will make (read, encode, decode, write back unchanged), moving that first-call cost out of the downtime.
    /// </summary>
    public void PrepareRestore()
    {
        machine.PrepareStateCapture();
        var own = machine.CaptureVcpuStates();
        machine.RestoreVcpuStates([.. own.Select(state => VcpuStateCodec.Decode(VcpuStateCodec.Encode(state)))]);
    }
}

/// <summary>The state sections of a machine: one per vCPU, then the balloon's transport and device.</summary>
public static class MachineState
{
    public const string VcpuSection = "vcpu";
    public const string TransportSection = "virtio-mmio";
    public const string BalloonSection = "virtio-balloon";

    public static IReadOnlyList<StateSection> Save(GuestMachine machine)
    {
        var sections = new List<StateSection>();
        foreach (var state in machine.CaptureVcpuStates())
            sections.Add(new StateSection(StateKind.Vcpu, (ushort)state.Index, VcpuSection, VcpuStateCodec.Encode(state)));
        if (machine.Balloon is not null)
        {
            sections.Add(new StateSection(StateKind.Device, 0, TransportSection, machine.BalloonTransport!.SaveState()));
            sections.Add(new StateSection(StateKind.Device, 0, BalloonSection, machine.Balloon.SaveState()));
        }
        return sections;
    }

    /// <summary>Validates the set of sections against this machine, then restores them (transport before device).</summary>
    public static void Restore(GuestMachine machine, IReadOnlyList<StateSection> sections)
    {
        var vcpus = new VcpuState?[machine.Config.Cpus];
        byte[]? transport = null, balloon = null;
        foreach (var section in sections)
        {
            switch (section.Kind, section.Name)
            {
                case (StateKind.Vcpu, VcpuSection):
                    if (section.Index >= vcpus.Length)
                        throw new InvalidDataException($"state for vCPU {section.Index}, but this machine has {vcpus.Length} vCPUs (start it with the source's --cpus)");
                    if (vcpus[section.Index] is not null)
                        throw new InvalidDataException($"two state sections for vCPU {section.Index}");
                    var state = VcpuStateCodec.Decode(section.Blob);
                    if (state.Index != section.Index)
                        throw new InvalidDataException($"vCPU section {section.Index} holds the state of vCPU {state.Index}");
                    vcpus[section.Index] = state;
                    break;
                case (StateKind.Device, TransportSection) when section.Index == 0:
                    transport = transport is null ? section.Blob : throw new InvalidDataException("two virtio-mmio state sections");
                    break;
                case (StateKind.Device, BalloonSection) when section.Index == 0:
                    balloon = balloon is null ? section.Blob : throw new InvalidDataException("two virtio-balloon state sections");
                    break;
                default:
                    throw new InvalidDataException($"unknown state section {section.Kind} {section.Index} '{section.Name}'");
            }
        }
        var missing = Array.FindIndex(vcpus, v => v is null);
        if (missing >= 0)
            throw new InvalidDataException($"no state for vCPU {missing} (the source had fewer vCPUs than this machine's {vcpus.Length})");
        if ((machine.Balloon is null) != (balloon is null) || (transport is null) != (balloon is null))
            throw new InvalidDataException(machine.Balloon is null
                ? "the stream carries balloon state but this machine has no balloon"
                : "the stream carries no balloon state but this machine has a balloon");
        if (machine.Balloon is not null)
        {
            machine.BalloonTransport!.RestoreState(transport);
            machine.Balloon.RestoreState(balloon);
        }
        machine.RestoreVcpuStates(vcpus!);
    }
}
