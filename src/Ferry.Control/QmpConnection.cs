using System.Net.Sockets;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Threading.Channels;

namespace Ferry.Control;

/// <summary>
/// One QMP client's output. Replies are never dropped: when more than <see cref="OutputLimitBytes"/> wait to be
/// written, the server stops reading this client's requests (<see cref="WaitForRoomAsync"/>) until the client
/// has read enough, as QEMU suspends a monitor whose output is backed up. Events cannot wait like that (they come
/// from the VM, which must never block on a client), so an event for a client already that far behind is dropped
/// for that client alone and counted; a stuck client so costs at most about twice the limit, whatever happens.
/// </summary>
internal sealed class QmpConnection : IDisposable
{
    /// <summary>Queued output past which reading stops and events are dropped (docs/qmp.md).</summary>
    public const int OutputLimitBytes = 1 << 20;

    private readonly Channel<byte[]> _outgoing = Channel.CreateUnbounded<byte[]>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Task _writeLoop;
    private readonly Lock _lock = new();
    private long _queuedBytes;
    private TaskCompletionSource? _room;
    private long _droppedEvents;

    public QmpConnection(Socket socket)
    {
        Socket = socket;
        _writeLoop = Task.Run(WriteLoopAsync);
    }

    public Socket Socket { get; }

    /// <summary>Set by the client's reader task, read by whichever thread emits an event.</summary>
    public bool Negotiated
    {
        get => Volatile.Read(ref _negotiated);
        set => Volatile.Write(ref _negotiated, value);
    }

    private bool _negotiated;

    /// <summary>Bytes waiting to be written to this client.</summary>
    public long QueuedBytes => Interlocked.Read(ref _queuedBytes);

    /// <summary>Events not sent to this client because its output was over the limit.</summary>
    public long DroppedEvents => Interlocked.Read(ref _droppedEvents);

    /// <summary>Queues a reply (or the greeting); never drops it.</summary>
    public void Reply(JsonObject message) => Enqueue(Encode(message));

    /// <summary>Queues an event unless this client is over the output limit.</summary>
    public void Event(byte[] encoded)
    {
        if (QueuedBytes > OutputLimitBytes)
        {
            Interlocked.Increment(ref _droppedEvents);
            return;
        }
        Enqueue(encoded);
    }

    public static byte[] Encode(JsonObject message) => Encoding.UTF8.GetBytes(message.ToJsonString(WireOptions) + "\r\n");

    /// <summary>Text as QEMU writes it ('quotes' stay quotes): the HTML-safe escaping .NET defaults to is for web pages.</summary>
    private static readonly JsonSerializerOptions WireOptions = new() { Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    /// <summary>Completes once the queued output is at or below the limit (at once when it already is).</summary>
    public Task WaitForRoomAsync(CancellationToken cancel)
    {
        lock (_lock)
        {
            if (_queuedBytes <= OutputLimitBytes)
                return Task.CompletedTask;
            _room ??= new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
            return _room.Task.WaitAsync(cancel);
        }
    }

    /// <summary>Lets the queued messages (e.g. a final event) reach the client before the socket closes.</summary>
    public Task DrainAsync(TimeSpan timeout)
    {
        _outgoing.Writer.TryComplete();
        return _writeLoop.WaitAsync(timeout);
    }

    private void Enqueue(byte[] bytes)
    {
        lock (_lock)
            _queuedBytes += bytes.Length;
        if (!_outgoing.Writer.TryWrite(bytes))
            Sent(bytes.Length); // closed: nothing will be written, so nothing is queued
    }

    private void Sent(int bytes)
    {
        TaskCompletionSource? room = null;
        lock (_lock)
        {
            _queuedBytes -= bytes;
            if (_queuedBytes <= OutputLimitBytes)
                (room, _room) = (_room, null);
        }
        room?.TrySetResult();
    }

    private async Task WriteLoopAsync()
    {
        try
        {
            await foreach (var bytes in _outgoing.Reader.ReadAllAsync().ConfigureAwait(false))
            {
                await Socket.SendAsync(bytes, SocketFlags.None).ConfigureAwait(false);
                Sent(bytes.Length);
            }
        }
        catch (Exception e) when (e is SocketException or ObjectDisposedException)
        {
            // The client is gone: release a reader waiting for room; it will find the socket closed.
            _outgoing.Writer.TryComplete();
            TaskCompletionSource? room;
            lock (_lock)
                (_queuedBytes, room, _room) = (0, _room, null);
            room?.TrySetResult();
        }
    }

    public void Dispose()
    {
        _outgoing.Writer.TryComplete();
        Socket.Dispose();
    }
}
