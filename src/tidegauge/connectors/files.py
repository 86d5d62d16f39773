"""File connectors: replay CSV/JSONL/Parquet files as streams and write streams to files.

- :class:`FileSource`: exactly-once (replayable from an exact position), optionally paced by event time;
- :class:`FileSink`: exactly-once (transactional parts committed at checkpoints, one final file on close).
"""

from __future__ import annotations

from tidegauge.connectors._fileparse import FORMATS, FileFormat
from tidegauge.connectors.files_sink import FileSink, FileSinkLogic, FileSinkState
from tidegauge.connectors.files_source import FileSource, FileSourceLogic, FileSourceState

__all__ = [
    "FORMATS",
    "FileFormat",
    "FileSink",
    "FileSinkLogic",
    "FileSinkState",
    "FileSource",
    "FileSourceLogic",
    "FileSourceState",
]
