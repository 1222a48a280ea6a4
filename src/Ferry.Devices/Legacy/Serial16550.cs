namespace Ferry.Devices.Legacy;

/// <summary>Where the serial port's output goes (a terminal, a socket, a test's line reader).</summary>
public interface ISerialOutput
{
    void Write(ReadOnlySpan<byte> data);
}

/// <summary>
/// A 16550A UART with the registers a polling guest and Linux's 8250 driver use. Transmit is instantaneous
/// (THR empty is always set); received bytes wait in a bounded FIFO. No interrupt line: Ferry's guest polls.
/// Thread-safe: vCPU threads access registers while a console thread feeds input.
/// </summary>
public sealed class Serial16550 : IPortDevice
{
    public const ushort Com1Base = 0x3F8;
    public const ushort PortCount = 8;

    private const byte LsrDataReady = 0x01;
    private const byte LsrOverrun = 0x02;
    private const byte LsrThrEmpty = 0x20;
    private const byte LsrTransmitterEmpty = 0x40;
    private const byte LcrDlab = 0x80;
    private const byte McrLoop = 0x10;
    private const int InputCapacity = 64 * 1024;

    private readonly Lock _lock = new();
    private readonly Queue<byte> _input = new();
    private readonly ISerialOutput _output;
    private byte _ier, _lcr, _mcr = 0x08, _scr, _dll = 0x0C, _dlm, _fcr;
    private bool _overrun;

    public Serial16550(ISerialOutput output) => _output = output;

    /// <summary>Bytes dropped because the guest did not read fast enough.</summary>
    public long DroppedInputBytes { get; private set; }

    /// <summary>
    /// Called (on the feeding thread, outside the UART's lock) after <see cref="EnqueueInput"/> queued bytes: the
    /// machine wakes an idle guest with it, so input is seen at once rather than at the guest's next poll.
    /// </summary>
    public Action? InputQueued { get; set; }

    /// <summary>Queues bytes for the guest to read. Bytes beyond the FIFO's capacity are dropped (and counted).</summary>
    public void EnqueueInput(ReadOnlySpan<byte> data)
    {
        if (data.IsEmpty)
            return;
        lock (_lock)
        {
            foreach (var b in data)
                EnqueueLocked(b);
        }
        InputQueued?.Invoke();
    }

    private void EnqueueLocked(byte b)
    {
        if (_input.Count >= InputCapacity)
        {
            _overrun = true;
            DroppedInputBytes++;
            return;
        }
        _input.Enqueue(b);
    }

    public void Read(ushort offset, Span<byte> data)
    {
        for (var i = 0; i < data.Length; i++)
            data[i] = ReadRegister(offset);
    }

    public void Write(ushort offset, ReadOnlySpan<byte> data)
    {
        if (offset == 0 && (_lcr & LcrDlab) == 0 && (_mcr & McrLoop) == 0)
        {
            // String output (rep outsb) arrives here as one span: pass it on whole.
            _output.Write(data);
            return;
        }
        foreach (var b in data)
            WriteRegister(offset, b);
    }

    private byte ReadRegister(ushort offset)
    {
        lock (_lock)
        {
            var dlab = (_lcr & LcrDlab) != 0;
            switch (offset)
            {
                case 0:
                    if (dlab)
                        return _dll;
                    return _input.Count > 0 ? _input.Dequeue() : (byte)0;
                case 1:
                    return dlab ? _dlm : _ier;
                case 2:
                    // IIR: FIFOs enabled bits when FCR enabled them; nothing pending (polling device).
                    return (byte)(((_fcr & 1) != 0 ? 0xC0 : 0) | 0x01);
                case 3:
                    return _lcr;
                case 4:
                    return _mcr;
                case 5:
                {
                    var lsr = (byte)(LsrThrEmpty | LsrTransmitterEmpty);
                    if (_input.Count > 0)
                        lsr |= LsrDataReady;
                    if (_overrun)
                    {
                        lsr |= LsrOverrun;
                        _overrun = false;
                    }
                    return lsr;
                }
                case 6:
                    return 0xB0; // DCD | DSR | CTS
                case 7:
                    return _scr;
                default:
                    return 0xFF;
            }
        }
    }

    private void WriteRegister(ushort offset, byte value)
    {
        lock (_lock)
        {
            var dlab = (_lcr & LcrDlab) != 0;
            switch (offset)
            {
                case 0:
                    if (dlab)
                        _dll = value;
                    else if ((_mcr & McrLoop) != 0)
                        EnqueueLocked(value);
                    else
                        _output.Write([value]);
                    break;
                case 1:
                    if (dlab)
                        _dlm = value;
                    else
                        _ier = (byte)(value & 0x0F);
                    break;
                case 2:
                    _fcr = value;
                    if ((value & 0x02) != 0)
                        _input.Clear();
                    break;
                case 3:
                    _lcr = value;
                    break;
                case 4:
                    _mcr = (byte)(value & 0x1F);
                    break;
                case 7:
                    _scr = value;
                    break;
                default:
                    break; // LSR and MSR are read-only
            }
        }
    }
}
