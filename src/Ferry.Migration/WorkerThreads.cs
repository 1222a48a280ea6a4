namespace Ferry.Migration;

/// <summary>
/// The one fan-out of the migration layer: N named worker threads, joined before returning. The engine's senders
/// (one per channel) and the snapshot reader's parallel load both run on it.
/// </summary>
internal static class WorkerThreads
{
    /// <summary>
    /// Runs <paramref name="work"/>(i) for every i below <paramref name="count"/>, each on its own background thread
    /// named <paramref name="name"/>i (one worker runs on the calling thread), and waits for all of them. A worker's
    /// exception ends that worker only: <paramref name="failed"/> is called with it at once on the worker's thread
    /// (so the others can be told to stop), and it is returned in the worker's slot.
    /// </summary>
    public static Exception?[] Run(int count, string name, Action<int> work, Action<Exception>? failed = null)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(count, 1);
        var errors = new Exception?[count];
        void Worker(int index)
        {
            try
            {
                work(index);
            }
            catch (Exception e)
            {
                errors[index] = e;
                failed?.Invoke(e);
            }
        }
        if (count == 1)
        {
            Worker(0);
            return errors;
        }
        var threads = new Thread[count];
        for (var i = 0; i < count; i++)
        {
            var index = i;
            threads[i] = new Thread(() => Worker(index)) { Name = $"{name}{i}", IsBackground = true };
            threads[i].Start();
        }
        foreach (var thread in threads)
            thread.Join();
        return errors;
    }
}
