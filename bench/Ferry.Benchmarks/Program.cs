using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(Ferry.Benchmarks.PageBitmapBenchmarks).Assembly).Run(args);
