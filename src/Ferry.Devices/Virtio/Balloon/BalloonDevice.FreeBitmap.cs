using System.Buffers.Binary;
using Ferry.Kvm;

namespace Ferry.Devices.Virtio.Balloon;

/// <summary>The guest's free pages as a bitmap, per block, for one request (extension b).</summary>
public sealed record FreePageBitmapResult(ulong RequestId, IReadOnlyList<PageSet> Blocks, ulong FreePages, ulong DroppedOutsideRamPages);

/// <summary>
/// FERRY_F_FREE_PAGE_BITMAP (docs/virtio-balloon.md, extension b): the driver keeps a request buffer posted; the
/// device fills it to ask for the guest's free page bitmap and collects the windows the driver sends back.
/// </summary>
public sealed partial class BalloonDevice
{
    private DescriptorChain? _heldRequest;
    private int _freeBitmapQueue = -1;
    private ulong _nextRequestId = 1;
    private ulong _outstandingRequest;
    private PageSet[]? _freeResult;
    private ulong _freeResultPages, _freeResultDropped;
    private TaskCompletionSource<FreePageBitmapResult>? _freeWaiter;

    public async Task<FreePageBitmapResult> RequestFreePageBitmapAsync(bool dropCaches, TimeSpan timeout)
    {
        // The driver re-posts its request buffer just after it sends the last window of the previous reply, so a
        // request that follows closely may have to wait for it.
        var deadline = DateTime.UtcNow + timeout;
        while (true)
        {
            lock (_transport.SyncRoot)
            {
                if (!_transport.DriverOk || !Has(FERRY_F_FREE_PAGE_BITMAP))
                    throw new InvalidOperationException("the guest's balloon driver has not negotiated the free page bitmap extension");
                if (_outstandingRequest != 0)
                    throw new InvalidOperationException("a free page bitmap request is already in progress");
                if (_heldRequest is not null)
                    break;
            }
            if (DateTime.UtcNow > deadline)
                throw new TimeoutException($"the guest did not post its free page bitmap request buffer within {timeout.TotalSeconds:0.#} s");
            await Task.Delay(1).ConfigureAwait(false);
        }
        Task<FreePageBitmapResult> wait;
        lock (_transport.SyncRoot)
        {
            if (_heldRequest is null || _outstandingRequest != 0)
                throw new InvalidOperationException("a free page bitmap request is already in progress");
            var queue = _transport.Queue(_freeBitmapQueue);
            if (!queue.Ready)
                throw new InvalidOperationException("the guest's free bitmap queue is not live");
            _outstandingRequest = _nextRequestId++;
            _freeResult = [.. _memory.Blocks.Select(b => new PageSet(b.PageCount))];
            _freeResultPages = _freeResultDropped = 0;
            _freeWaiter = new TaskCompletionSource<FreePageBitmapResult>(TaskCreationOptions.RunContinuationsAsynchronously);
            wait = _freeWaiter.Task;
            Span<byte> request = stackalloc byte[16];
            BinaryPrimitives.WriteUInt16LittleEndian(request, BalloonBitmapMessage.CommandFreePages);
            BinaryPrimitives.WriteUInt16LittleEndian(request[2..], dropCaches ? (ushort)1 : (ushort)0);
            BinaryPrimitives.WriteUInt64LittleEndian(request[8..], _outstandingRequest);
            try
            {
                var written = queue.WriteAll(_heldRequest, request);
                queue.PushUsed(_heldRequest.Head, written);
            }
            catch (GuestMemoryException e)
            {
                // Buffers were validated when posted; if guest memory still refuses, give up on this request
                // rather than leave it outstanding for ever.
                _outstandingRequest = 0;
                _freeWaiter = null;
                _heldRequest = null;
                _transport.NeedsReset(VirtioFaults.BufferOutsideRam, $"free bitmap request buffer: {e.Message}");
                throw new InvalidOperationException("the guest's free bitmap request buffer is not usable", e);
            }
            _heldRequest = null;
            _transport.SignalUsed();
        }
        try
        {
            return await wait.WaitAsync(timeout).ConfigureAwait(false);
        }
        catch (TimeoutException)
        {
            lock (_transport.SyncRoot)
                _outstandingRequest = 0;
            throw new TimeoutException($"the guest did not send its free page bitmap within {timeout.TotalSeconds:0.#} s");
        }
    }

    private bool HandleFreeBitmap(SplitQueue queue, DescriptorChain chain)
    {
        _freeBitmapQueue = QueueOf(Role.FreeBitmap);
        if (chain.WritableLength > 0 && chain.ReadableLength == 0)
        {
            if (chain.WritableLength < 16 || _heldRequest is not null)
            {
                _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"request buffer of {chain.WritableLength} bytes while {(_heldRequest is null ? "none" : "one")} is held");
                queue.PushUsed(chain.Head, 0);
                return true;
            }
            _heldRequest = chain;
            return false;
        }
        var data = ReadCounted(queue, chain, BalloonBitmapMessage.HeaderSize + BalloonBitmapMessage.MaxBitmapBytes);
        if (!BalloonBitmapMessage.TryParse(data, out var message, out var error) || message.Command != BalloonBitmapMessage.CommandFreePages)
        {
            _transport.Log.Warn(Name, VirtioFaults.BadRequest, error.Length > 0 ? error : $"command {message.Command} on the free bitmap queue");
        }
        else if (message.RequestId != _outstandingRequest || _outstandingRequest == 0)
        {
            _transport.Log.Warn(Name, VirtioFaults.BadRequest, $"free page bitmap for request {message.RequestId}, but {_outstandingRequest} is outstanding");
        }
        else
        {
            // No cap on runs here: a fragmented guest's free memory is many runs, and each only sets bits (no
            // discard); the byte budget still bounds the buffers one notify takes.
            foreach (var run in message.Runs())
            {
                _notifyRuns++;
                _freeResultDropped += _memory.ForEachRamRange(run.Start << Page.Shift, run.Length << Page.Shift, (block, offset, length) =>
                {
                    _freeResult![IndexOf(block)].AddRange(offset >> Page.Shift, length >> Page.Shift);
                    _freeResultPages += length >> Page.Shift;
                }) >> Page.Shift;
            }
            if ((message.Flags & BalloonBitmapMessage.FlagDone) != 0)
            {
                var result = new FreePageBitmapResult(_outstandingRequest, _freeResult!, _freeResultPages, _freeResultDropped);
                _outstandingRequest = 0;
                var waiter = _freeWaiter;
                _freeWaiter = null;
                waiter?.TrySetResult(result);
            }
        }
        queue.PushUsed(chain.Head, 0);
        return true;
    }

    private void ResetFreeBitmap()
    {
        _heldRequest = null;
        _outstandingRequest = 0;
        _freeWaiter?.TrySetException(new InvalidOperationException("the balloon device was reset"));
        _freeWaiter = null;
    }
}
