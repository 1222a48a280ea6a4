using Ferry.Kvm;

namespace Ferry.Devices.Virtio;

/// <summary>The transport's state for migration and snapshots: registers and every queue's configuration and position.</summary>
public sealed partial class VirtioMmioTransport
{
    private const uint StateVersion = 1;

    public byte[] SaveState()
    {
        lock (SyncRoot)
        {
            var w = new StateWriter().U32(StateVersion).U32(_device.DeviceId)
                .U32(_status).U32(_interruptStatus).U32(_configGeneration)
                .U64(_driverFeatures).U64(NegotiatedFeatures)
                .U32(_deviceFeaturesSel).U32(_driverFeaturesSel).U32(_queueSel)
                .U32((uint)_queues.Length);
            foreach (var q in _queues)
            {
                w.U16(q.Size).U8(q.Ready ? (byte)1 : (byte)0).U64(q.DescTable).U64(q.AvailRing).U64(q.UsedRing)
                    .U16(q.LastAvailIndex).U16(q.UsedIndex);
            }
            return w.ToArray();
        }
    }

    /// <summary>Loads state saved by <see cref="SaveState"/>; everything is checked as if the guest had written it.</summary>
    public void RestoreState(ReadOnlySpan<byte> blob)
    {
        var r = new StateReader(blob, "virtio-mmio state");
        var version = r.U32();
        var deviceId = r.U32();
        if (version != StateVersion || deviceId != _device.DeviceId)
            throw new InvalidDataException($"virtio-mmio state version {version} for device {deviceId}; expected version {StateVersion} for device {_device.DeviceId}");
        lock (SyncRoot)
        {
            var status = r.U32();
            var interrupt = r.U32();
            var generation = r.U32();
            var driverFeatures = r.U64();
            var negotiated = r.U64();
            // Only the negotiated set must be offered: the driver-features register holds whatever the guest wrote
            // (FEATURES_OK refuses unoffered bits), and a guest's running state must always restore.
            if ((negotiated & ~_device.DeviceFeatures) != 0)
                throw new InvalidDataException($"virtio-mmio state: features 0x{negotiated:X} are not all offered by this device");
            var deviceSel = r.U32();
            var driverSel = r.U32();
            var queueSel = r.U32();
            var count = r.U32();
            if (count != _queues.Length)
                throw new InvalidDataException($"virtio-mmio state: {count} queues, this device has {_queues.Length}");
            foreach (var q in _queues)
            {
                q.Size = r.U16();
                q.Ready = r.U8() != 0;
                q.DescTable = r.U64();
                q.AvailRing = r.U64();
                q.UsedRing = r.U64();
                q.LastAvailIndex = r.U16();
                q.UsedIndex = r.U16();
                if (q.Ready && q.ValidateRings() is { } fault)
                    throw new InvalidDataException($"virtio-mmio state: a ready queue is invalid here: {fault}");
                if (q.Size == 0 || q.Size > q.MaxSize)
                    throw new InvalidDataException($"virtio-mmio state: queue size {q.Size} is outside 1..{q.MaxSize}");
            }
            r.End();
            _status = status;
            _interruptStatus = interrupt;
            _configGeneration = generation;
            _driverFeatures = driverFeatures;
            NegotiatedFeatures = negotiated;
            _deviceFeaturesSel = deviceSel;
            _driverFeaturesSel = driverSel;
            _queueSel = queueSel;
        }
    }
}
