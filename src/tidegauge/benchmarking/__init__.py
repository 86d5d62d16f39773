"""Benchmarks that ship with tidegauge (``tidegauge bench``): throughput and memory against references
run in the same command, each in a fresh process. Run them as modules (``python -m
tidegauge.benchmarking.windows``); nothing here is imported by the engine."""

from __future__ import annotations

__all__: list[str] = []
