using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(Ferry.Benchmarks.DirtyBitmapBenchmarks).Assembly).Run(args);
