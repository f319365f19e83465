"""Benchmarks of ralph's own cost: ``make bench`` or ``python -m bench`` (see bench/README.md)."""
