"""Benchmark harnesses: measurement code the experiments/bench_*.py entry points call."""
