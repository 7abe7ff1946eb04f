"""Benchmarks that run the baseline beside twofold in one process and write JSON."""
