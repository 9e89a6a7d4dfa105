"""Benchmarks for the help desk; run them as scripts, e.g. `python bench/ingest.py`."""
