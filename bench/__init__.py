"""Benchmarks, one module each, all reachable from `tapas bench`."""
