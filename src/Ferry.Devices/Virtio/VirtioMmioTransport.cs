using System.Buffers.Binary;
using Ferry.Kvm;

namespace Ferry.Devices.Virtio;

/// <summary>
/// The virtio-mmio transport, version 2 (virtio 1.x "modern" register layout). The driver's register writes are
/// hostile input: read-only registers ignore writes, sizes are checked, FEATURES_OK is refused without VERSION_1
/// or with features the device does not offer, rings outside RAM set DEVICE_NEEDS_RESET.
/// </summary>
public sealed partial class VirtioMmioTransport : IMmioDevice, IVirtioTransport
{
    public const uint MagicValue = 0x74726976;   // "virt"
    public const uint VendorId = 0x46455259;     // "FERY"
    public const ulong WindowSize = 0x1000;
    private const int ConfigOffset = 0x100;

    private readonly IVirtioDevice _device;
    private readonly SplitQueue[] _queues;
    private uint _deviceFeaturesSel;
    private uint _driverFeaturesSel;
    private ulong _driverFeatures;
    private uint _queueSel;
    private uint _status;
    private uint _interruptStatus;
    private uint _configGeneration;

    public VirtioMmioTransport(IVirtioDevice device, GuestMemory memory, DeviceLog log)
    {
        _device = device;
        Log = log;
        _queues = [.. Enumerable.Range(0, device.QueueCount).Select(_ => new SplitQueue(memory, device.QueueMaxSize))];
    }

    public Lock SyncRoot { get; } = new();

    public DeviceLog Log { get; }

    public ulong NegotiatedFeatures { get; private set; }

    public bool DriverOk => (_status & VirtioBits.StatusDriverOk) != 0 && (_status & VirtioBits.StatusNeedsReset) == 0;

    public uint Status
    {
        get
        {
            lock (SyncRoot)
                return _status;
        }
    }

    public uint InterruptStatus
    {
        get
        {
            lock (SyncRoot)
                return _interruptStatus;
        }
    }

    public uint ConfigGeneration
    {
        get
        {
            lock (SyncRoot)
                return _configGeneration;
        }
    }

    public SplitQueue Queue(int index) => _queues[index];

    public void SignalUsed() => _interruptStatus |= 1;

    public void SignalConfigChange()
    {
        _configGeneration++;
        _interruptStatus |= 2;
    }

    public void NeedsReset(string fault, string detail)
    {
        Log.Warn(_device.Name, fault, detail + "; device needs reset");
        _status |= VirtioBits.StatusNeedsReset;
        _interruptStatus |= 2;
    }

    public void Read(ulong offset, Span<byte> data)
    {
        lock (SyncRoot)
        {
            if (offset >= ConfigOffset)
            {
                var configOffset = (int)(offset - ConfigOffset);
                if (configOffset + data.Length <= _device.ConfigSize)
                    _device.ReadConfig(configOffset, data);
                else
                    data.Clear();
                return;
            }
            if (data.Length != 4)
            {
                Log.Warn(_device.Name, VirtioFaults.BadAccessSize, $"read of {data.Length} bytes at 0x{offset:X}");
                data.Fill(0xFF);
                return;
            }
            BinaryPrimitives.WriteUInt32LittleEndian(data, ReadRegister(offset));
        }
    }

    private uint ReadRegister(ulong offset)
    {
        var queue = _queueSel < _queues.Length ? _queues[_queueSel] : null;
        return offset switch
        {
            0x000 => MagicValue,
            0x004 => 2,
            0x008 => _device.DeviceId,
            0x00C => VendorId,
            0x010 => _deviceFeaturesSel switch
            {
                0 => (uint)_device.DeviceFeatures,
                1 => (uint)(_device.DeviceFeatures >> 32),
                _ => 0,
            },
            0x034 => queue?.MaxSize ?? 0,
            0x044 => queue is { Ready: true } ? 1u : 0u,
            0x060 => _interruptStatus,
            0x070 => _status,
            0x0B0 or 0x0B4 or 0x0B8 or 0x0BC => 0xFFFF_FFFF, // no shared memory regions
            0x0FC => _configGeneration,
            _ => 0,
        };
    }

    public void Write(ulong offset, ReadOnlySpan<byte> data)
    {
        lock (SyncRoot)
        {
            if (offset >= ConfigOffset)
            {
                var configOffset = (int)(offset - ConfigOffset);
                if (configOffset + data.Length <= _device.ConfigSize)
                    _device.WriteConfig(configOffset, data);
                return;
            }
            if (data.Length != 4)
            {
                Log.Warn(_device.Name, VirtioFaults.BadAccessSize, $"write of {data.Length} bytes at 0x{offset:X}");
                return;
            }
            WriteRegister(offset, BinaryPrimitives.ReadUInt32LittleEndian(data));
        }
    }

    private void WriteRegister(ulong offset, uint value)
    {
        var queue = _queueSel < _queues.Length ? _queues[_queueSel] : null;
        switch (offset)
        {
            case 0x014:
                _deviceFeaturesSel = value;
                break;
            case 0x020:
                if ((_status & VirtioBits.StatusFeaturesOk) != 0)
                    break; // features are final once FEATURES_OK is set
                if (_driverFeaturesSel == 0)
                    _driverFeatures = (_driverFeatures & 0xFFFF_FFFF_0000_0000) | value;
                else if (_driverFeaturesSel == 1)
                    _driverFeatures = (_driverFeatures & 0xFFFF_FFFF) | ((ulong)value << 32);
                break;
            case 0x024:
                _driverFeaturesSel = value;
                break;
            case 0x030:
                _queueSel = value;
                break;
            case 0x038:
                if (queue is null || queue.Ready || value == 0 || value > queue.MaxSize)
                    Log.Warn(_device.Name, VirtioFaults.BadQueueConfig, $"QueueNum {value} for queue {_queueSel}");
                else
                    queue.Size = (ushort)value;
                break;
            case 0x044:
                SetQueueReady(queue, value);
                break;
            case 0x050:
                if (DriverOk && value < _queues.Length && _queues[value].Ready)
                    _device.QueueNotify((int)value);
                break;
            case 0x064:
                _interruptStatus &= ~value;
                break;
            case 0x070:
                WriteStatus(value);
                break;
            case 0x080: SetQueueAddress(queue, q => q.DescTable = (q.DescTable & ~0xFFFF_FFFFUL) | value); break;
            case 0x084: SetQueueAddress(queue, q => q.DescTable = (q.DescTable & 0xFFFF_FFFF) | ((ulong)value << 32)); break;
            case 0x090: SetQueueAddress(queue, q => q.AvailRing = (q.AvailRing & ~0xFFFF_FFFFUL) | value); break;
            case 0x094: SetQueueAddress(queue, q => q.AvailRing = (q.AvailRing & 0xFFFF_FFFF) | ((ulong)value << 32)); break;
            case 0x0A0: SetQueueAddress(queue, q => q.UsedRing = (q.UsedRing & ~0xFFFF_FFFFUL) | value); break;
            case 0x0A4: SetQueueAddress(queue, q => q.UsedRing = (q.UsedRing & 0xFFFF_FFFF) | ((ulong)value << 32)); break;
            case 0x0AC:
                break; // SHMSel: no shared memory regions
            default:
                Log.Warn(_device.Name, VirtioFaults.ReadOnlyRegister, $"write of 0x{value:X} to offset 0x{offset:X}");
                break;
        }
    }

    private void SetQueueAddress(SplitQueue? queue, Action<SplitQueue> set)
    {
        if (queue is null || queue.Ready)
        {
            Log.Warn(_device.Name, VirtioFaults.BadQueueConfig, $"ring address written for queue {_queueSel} while it is ready or absent");
            return;
        }
        set(queue);
    }

    private void SetQueueReady(SplitQueue? queue, uint value)
    {
        if (queue is null)
        {
            Log.Warn(_device.Name, VirtioFaults.BadQueueConfig, $"QueueReady for absent queue {_queueSel}");
            return;
        }
        if (value == 0)
        {
            // Without VIRTIO_F_RING_RESET a driver may not take a live queue away: the device may hold its buffers.
            if (queue.Ready && (_status & VirtioBits.StatusDriverOk) != 0)
            {
                NeedsReset(VirtioFaults.BadQueueConfig, $"QueueReady=0 for live queue {_queueSel}");
                return;
            }
            queue.Ready = false;
            return;
        }
        if (queue.ValidateRings() is { } fault)
        {
            NeedsReset(fault, $"queue {_queueSel}: desc 0x{queue.DescTable:X} avail 0x{queue.AvailRing:X} used 0x{queue.UsedRing:X} size {queue.Size}");
            return;
        }
        queue.Ready = true;
    }

    private void WriteStatus(uint value)
    {
        if (value == 0)
        {
            Reset();
            return;
        }
        if ((_status & ~value & 0x0F) != 0)
        {
            // Status bits only ever get set until a reset; clearing one would renegotiate features under a device
            // that holds state from the old ones (e.g. a balloon bitmap trusted only with MUST_TELL_HOST).
            NeedsReset(VirtioFaults.BadRequest, $"Status write 0x{value:X} clears bits of 0x{_status:X} without a reset");
            return;
        }
        if ((value & VirtioBits.StatusFeaturesOk) != 0 && (_status & VirtioBits.StatusFeaturesOk) == 0)
        {
            var unsupported = _driverFeatures & ~_device.DeviceFeatures;
            if (unsupported != 0 || !VirtioBits.Has(_driverFeatures, VirtioBits.VERSION_1))
            {
                Log.Warn(_device.Name, VirtioFaults.BadRequest, unsupported != 0
                    ? $"driver accepted features 0x{unsupported:X} the device does not offer"
                    : "driver did not accept VERSION_1");
                value &= ~VirtioBits.StatusFeaturesOk; // the driver sees FEATURES_OK was not taken
            }
            else
            {
                NegotiatedFeatures = _driverFeatures;
            }
        }
        var wasOk = (_status & VirtioBits.StatusDriverOk) != 0;
        _status = value | (_status & VirtioBits.StatusNeedsReset);
        if (!wasOk && (value & VirtioBits.StatusDriverOk) != 0 && (value & VirtioBits.StatusFeaturesOk) != 0)
            _device.Activate();
    }

    /// <summary>Back to the state after power-on: the driver must negotiate again.</summary>
    public void Reset()
    {
        lock (SyncRoot)
        {
            _status = 0;
            _interruptStatus = 0;
            _driverFeatures = 0;
            NegotiatedFeatures = 0;
            _queueSel = _deviceFeaturesSel = _driverFeaturesSel = 0;
            foreach (var q in _queues)
                q.Reset();
            _device.Reset();
        }
    }
}
