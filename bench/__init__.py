"""Benchmarks: run with `python -m bench.<name>` (see each module)."""
