"""Benchmarks: run with `make bench`; they print figures and ratios, they are not tests."""
