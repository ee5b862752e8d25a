"""Benchmarks of nids-bento (not part of the test suite): in-process inference and served throughput."""
