"""Event-time windows over keyed streams.

Contract: a :class:`WindowStep` is a step definition (``build(resume_state) -> logic``); its logic folds
each batch into per-(key, window) state, emits results when the watermark closes windows (or after every
batch with ``emit="update"``), sends records beyond the allowed lateness to the ``"late"`` side output,
and snapshots its open state as a typed msgspec struct. Window kinds: :class:`Tumbling`,
:class:`Sliding`, :class:`Session`, :class:`Count`. Aggregations are described in
:mod:`tidegauge.aggregate`.
"""

from __future__ import annotations

from tidegauge.windows._count import CountWindower, CountWindowSnapshot
from tidegauge.windows._fixed import FixedWindower, FixedWindowSnapshot
from tidegauge.windows._session import SessionWindower, SessionWindowSnapshot
from tidegauge.windows.kinds import Count, Session, Sliding, Tumbling, WindowKind
from tidegauge.windows.step import Windower, WindowStep

__all__ = [
    "Count",
    "CountWindowSnapshot",
    "CountWindower",
    "FixedWindowSnapshot",
    "FixedWindower",
    "Session",
    "SessionWindowSnapshot",
    "SessionWindower",
    "Sliding",
    "Tumbling",
    "WindowKind",
    "WindowStep",
    "Windower",
]
