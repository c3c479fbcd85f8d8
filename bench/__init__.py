"""Benchmarks of tell-ray and their runner (``python -m bench <name> ...``), kept out of the
installed package. Run from the repository root."""
