"""Heavy libraries are imported when first used, not when tidegauge is imported (idle edge agent memory).

numba alone is ~55 MB resident: an agent that has not run a kernel yet must not have it, and the first
kernel call must still compile and give the right answer, including a kernel that calls another one.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from tidegauge._jit import LazyKernel, lazy_njit


@lazy_njit(cache=False)
def _inner(x: float) -> float:  # pragma: no cover - compiled
    return x * 2.0


@lazy_njit(cache=False)
def _outer(xs: np.ndarray) -> float:  # pragma: no cover - compiled
    total = 0.0
    for v in xs:
        total += _inner(v)
    return total


def test_a_kernel_calling_another_lazy_kernel_compiles_on_first_call() -> None:
    assert isinstance(_outer, LazyKernel)
    assert _outer(np.arange(5.0)) == 20.0
    # the callee was swapped for its numba dispatcher in the module's globals, so numba could type it
    assert not isinstance(globals()["_inner"], LazyKernel)
    assert "compiled" in repr(_outer)


_AGENT_IMPORTS = (
    "import sys, tidegauge.cli, tidegauge.edge.agent, tidegauge.edge.uplink, tidegauge.edge.sink, "
    "tidegauge.dataflow, tidegauge.windows, tidegauge.detectors, tidegauge.alerting, tidegauge.simulate; "
    "from tidegauge.cli import _register; _register(); "
)


def _run(code: str) -> list[str]:
    """What ``code`` prints in a fresh interpreter, split in words (it must exit 0)."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_importing_the_agent_and_every_kernel_module_does_not_import_numba() -> None:
    code = _AGENT_IMPORTS + "print(sorted(m for m in ('numba', 'llvmlite', 'scipy') if m in sys.modules))"
    assert _run(code) == ["[]"]


def test_first_detector_and_window_use_loads_numba_and_computes() -> None:
    code = _AGENT_IMPORTS + (
        "import polars as pl\n"
        "from tidegauge.dataflow import Flow\n"
        "from tidegauge.detectors import ZScore\n"
        "from tidegauge.testing import MemorySink, MemorySource\n"
        "from tidegauge.windows import Tumbling\n"
        "assert 'numba' not in sys.modules\n"
        "ts = [f'2026-01-01T00:00:{s:02d}Z' for s in range(50)]\n"
        "df = pl.DataFrame({'sensor_id': ['a'] * 50, 'timestamp': ts, 'v': [1.0] * 49 + [90.0]})\n"
        "df = df.with_columns(pl.col('timestamp').str.to_datetime(time_zone='UTC'))\n"
        "flow = Flow('f')\n"
        "scored = flow.source(MemorySource([df])).detect(ZScore(fields=['v'], warmup=10))\n"
        "out, wins = MemorySink(), MemorySink()\n"
        "scored.sink(out)\n"
        "scored.window(Tumbling('1m'), {'v': ['count', 'max']}).sink(wins)\n"
        "flow.run()\n"
        "res = out.to_frame()\n"
        "print('numba' in sys.modules, res['is_anomaly'][-1], res['is_anomaly'][:-1].any(), "
        "wins.to_frame()['v_count'].to_list(), wins.to_frame()['v_max'].to_list())\n"
    )
    assert _run(code) == ["True", "True", "False", "[50]", "[90.0]"]


def test_a_flow_without_detectors_or_windows_never_loads_numba() -> None:
    """Event time (watermarks) is vectorised with numpy; only a future-stamped record needs the compiled loop.
    Keys of batches under 512 rows are looked up in a dict (larger ones in the compiled key table)."""
    code = (
        "import sys, polars as pl\n"
        "from tidegauge.dataflow import Flow\n"
        "from tidegauge.testing import MemorySink, MemorySource\n"
        "ts = [f'2026-01-01T00:00:{s:02d}Z' for s in range(50)]\n"
        "df = pl.DataFrame({'sensor_id': ['a', 'b'] * 25, 'timestamp': ts, 'v': list(range(50))})\n"
        "df = df.with_columns(pl.col('timestamp').str.to_datetime(time_zone='UTC'))\n"
        "flow = Flow('f')\n"
        "out = MemorySink()\n"
        "flow.source(MemorySource(df, batch_rows=7)).filter('v >= 10').sink(out)\n"
        "flow.run()\n"
        "print('numba' in sys.modules, out.to_frame().height)\n"
    )
    assert _run(code) == ["False", "40"]


def test_the_agent_cli_and_the_server_package_do_not_import_pyarrow() -> None:
    """pyarrow (~26 MB resident) is loaded by the HTTP ingest readers when they first build a column.

    The agent's CLI once imported the server package for a size parser, and with it the readers' pyarrow.
    """
    code = _AGENT_IMPORTS + (
        "import tidegauge.server, tidegauge.connectors.http, tidegauge._size\n"
        "print('pyarrow' in sys.modules)\n"
    )
    assert _run(code) == ["False"]
