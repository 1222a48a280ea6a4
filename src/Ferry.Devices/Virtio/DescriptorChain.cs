namespace Ferry.Devices.Virtio;

/// <summary>One buffer of a descriptor chain: guest-physical address and length, validated to lie in RAM.</summary>
public readonly record struct BufferSegment(ulong Address, uint Length, bool Writable);

/// <summary>A validated descriptor chain popped from a virtqueue.</summary>
public sealed class DescriptorChain(ushort head, BufferSegment[] segments)
{
    public ushort Head { get; } = head;

    public IReadOnlyList<BufferSegment> Segments { get; } = segments;

    public IEnumerable<BufferSegment> Readable => Segments.Where(s => !s.Writable);

    public IEnumerable<BufferSegment> Writable => Segments.Where(s => s.Writable);

    public ulong ReadableLength => Readable.Aggregate(0UL, (sum, s) => sum + s.Length);

    public ulong WritableLength => Writable.Aggregate(0UL, (sum, s) => sum + s.Length);
}

/// <summary>Why a chain or a ring was refused. Names are the fault classes the device log reports.</summary>
public static class VirtioFaults
{
    public const string DescriptorIndex = "descriptor index out of range";
    public const string ChainLoop = "descriptor chain loops";
    public const string ChainTooLong = "descriptor chain longer than the queue";
    public const string BufferOutsideRam = "buffer outside guest RAM or across RAM blocks";
    public const string WrongDirection = "buffer direction not what the request needs";
    public const string IndirectNotNegotiated = "indirect descriptor without VIRTIO_F_INDIRECT_DESC";
    public const string AvailIndexRunaway = "available index ahead of the device by more than the queue size";
    public const string RingOutsideRam = "virtqueue ring outside guest RAM";
    public const string ReadOnlyRegister = "write to a read-only register";
    public const string BadAccessSize = "register access not 32 bits wide";
    public const string BadQueueConfig = "queue configured with a bad size or while ready";
    public const string BadRequest = "malformed request";
}
