using BenchmarkDotNet.Running;

BenchmarkSwitcher.FromAssembly(typeof(Ferry.Benchmarks.PageSetBenchmarks).Assembly).Run(args);
