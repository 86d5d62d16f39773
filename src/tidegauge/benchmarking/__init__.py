"""Benchmarks that ship with tidegauge (``tidegauge bench``): throughput and memory against references
run in the same command, each in a fresh process."""
