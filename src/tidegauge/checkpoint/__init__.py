"""Checkpoints: versioned, typed snapshots of a flow, stored atomically.

Contract (see also the commit order in :mod:`tidegauge.connectors.base`):

- a checkpoint is one directory ``chk-<epoch>`` holding one msgpack file per entry (a ``msgspec.Struct``
  snapshot of a source, step, sink or the key dictionary) and a ``MANIFEST.json`` written last and
  atomically; it is complete iff the manifest exists and every entry matches its checksum;
- :meth:`CheckpointStore.latest` returns the newest complete checkpoint, falling back past corrupt ones;
- never pickles: entries decode only into the type the caller names.
"""

from __future__ import annotations

from tidegauge.checkpoint.store import Checkpoint, CheckpointInfo, CheckpointStore, ManifestEntry

__all__ = ["Checkpoint", "CheckpointInfo", "CheckpointStore", "ManifestEntry"]
