"""Keyed operator state with time-to-live.

:class:`KeyedState` keeps one value per key id (any msgpack-able value: numbers, strings, lists, dicts)
with the event time it was last updated; values not updated for ``ttl`` are dropped when the watermark
passes ``last update + ttl``, so state for keys that went away does not grow without bound.
:class:`StatefulMapStep` (``Stream.stateful_map``) is the per-record operator built on it.
"""

from __future__ import annotations

from tidegauge.state.keyed import KeyedState, KeyedStateSnapshot, StatefulMapStep

__all__ = ["KeyedState", "KeyedStateSnapshot", "StatefulMapStep"]
