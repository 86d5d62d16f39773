"""Windowed aggregation: tidegauge against the peer references (see tidegauge/benchmarking/windows.py).

    python benchmarks/windows_vs_peers.py [--reps 3] [--workload sparse|dense|all] [--memory]
"""

from tidegauge.benchmarking.windows import main

if __name__ == "__main__":
    main()
