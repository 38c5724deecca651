"""Benchmarks: each prints its measurement and the ratio to its target, measured in one run."""
