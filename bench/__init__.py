"""The spintrail benchmark suite: ingest throughput and latency, storage, queries and memory.

Run it with ``python bench/run.py [--quick | --full]``; results go to ``docs/benchmarks.md``.
"""
