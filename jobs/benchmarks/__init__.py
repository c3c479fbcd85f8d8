"""Benchmarks run through ``python -m jobs.benchmark <name>``; one module per benchmark, each
exposing ``main(argv) -> dict``."""
