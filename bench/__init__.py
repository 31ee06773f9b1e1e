"""Benchmarks: `make bench` (= `python -m bench [NAME ...]`). Each `bench_<area>.py` exposes `run()`."""
