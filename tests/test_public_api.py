"""Every subpackage's ``__all__`` is complete and importable (ruff keeps it sorted); no optional client leaks
into the core."""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys

import pytest

import tidegauge

PACKAGES = sorted(
    m.name for m in pkgutil.iter_modules(tidegauge.__path__, "tidegauge.") if m.ispkg and not m.name.endswith("cli")
)


@pytest.mark.parametrize("name", ["tidegauge", *PACKAGES])
def test_all_is_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    if exported is None:
        pytest.fail(f"{name} has no __all__")
    for item in exported:
        assert hasattr(module, item), f"{name}.__all__ names {item!r}, which it does not define"


def test_public_classes_of_the_engine_are_exported() -> None:
    from tidegauge import dataflow, windows

    for cls in ("Flow", "Stream", "Runner", "CheckpointConfig", "WatermarkConfig", "KeyDictionary"):
        assert cls in dataflow.__all__
    for cls in ("Tumbling", "Sliding", "Session", "Count", "WindowStep"):
        assert cls in windows.__all__


def test_core_import_pulls_in_no_connector_client() -> None:
    code = (
        "import sys, tidegauge, tidegauge.dataflow, tidegauge.windows, tidegauge.detectors, tidegauge.pipeline; "
        "print(sorted(m for m in ('paho', 'nats', 'redis', 'psycopg', 'starlette', 'uvicorn') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
