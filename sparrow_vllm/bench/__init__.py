"""Benchmark and demo building blocks: timed offline vLLM runs, a `vllm serve` handle,
toy-world requests, and the speedup and acceptance arithmetic."""
