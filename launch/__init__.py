"""Entry points: train, evaluate, data, benchmarks."""
