"""Byte sizes given as ``1048576``, ``"512KiB"``, ``"8MiB"``, ``"1GB"``.

A core module (standard library only): the edge agent's CLI parses ``--max-bytes`` with it, and importing
:mod:`tidegauge.server.config` for that would import the whole server package (starlette, the HTTP
ingest readers and pyarrow, ~30 MB resident in an agent that never serves ingest).
"""

from __future__ import annotations

import logging
import re

from tidegauge.errors import ConfigError

__all__ = ["parse_size"]

logger = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$")
_UNITS = {None: 1, "B": 1, "KB": 1000, "KiB": 1024, "MB": 10**6, "MiB": 2**20, "GB": 10**9, "GiB": 2**30}


def parse_size(value: int | str, *, name: str = "size") -> int:
    """Bytes from ``1048576``, ``"512KiB"``, ``"8MiB"``, ``"1GB"``.

    >>> parse_size("8MiB")
    8388608
    """
    if isinstance(value, int) and not isinstance(value, bool):
        n = value
    else:
        m = _SIZE.match(str(value))
        if m is None:
            raise ConfigError(f"{name}={value!r}: use a number of bytes or e.g. '512KiB', '8MiB'")
        n = int(m.group(1)) * _UNITS[m.group(2)]
    if n < 1:
        raise ConfigError(f"{name}={value!r}: must be at least 1 byte")
    return n
