"""CheckpointStore: atomic writes, fallback past corrupt checkpoints, pruning, typed round trips."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import msgspec
import numpy as np
import pytest

from tidegauge._time import ManualClock
from tidegauge.checkpoint import CheckpointStore
from tidegauge.checkpoint.codec import ArrayBlob, pack_array, unpack_array
from tidegauge.checkpoint.store import MANIFEST
from tidegauge.errors import CheckpointError


class Pos(msgspec.Struct, frozen=True, tag="test-pos-v1"):
    offset: int
    name: str = ""


class Window(msgspec.Struct, frozen=True, tag="test-window-v1"):
    sums: ArrayBlob
    keys: list[str]


class OtherPos(msgspec.Struct, frozen=True, tag="test-pos-v2"):
    offset: int


def _write(store: CheckpointStore, epoch: int) -> None:
    store.write(epoch, {"source:readings": Pos(epoch * 10), "step:map": None}, meta={"epoch": epoch})


def test_round_trip_typed_structs(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, clock=ManualClock(1_700_000_000_000_000))
    sums = np.array([[1.5, 2.0], [3.0, -1.0]])
    info = store.write(
        1,
        {"keys": Pos(3, "k"), "step:window_0": Window(pack_array(sums), ["a", "b"]), "sink:out": None},
        meta={"flow": "demo", "watermark": 12, "ratio": 0.5, "ok": True, "none": None},
    )
    assert info.complete and info.epoch == 1 and set(info.entries) == {"keys", "step:window_0", "sink:out"}
    cp = store.latest()
    assert cp is not None
    assert cp.epoch == 1 and cp.created_at.tzinfo is not None
    assert cp.created_at.timestamp() == 1_700_000_000
    assert cp.meta == {"flow": "demo", "watermark": 12, "ratio": 0.5, "ok": True, "none": None}
    assert cp.names() == ["keys", "step:window_0", "sink:out"]
    assert cp.load("keys", Pos) == Pos(3, "k")
    w = cp.load("step:window_0", Window)
    assert w is not None and np.array_equal(unpack_array(w.sums), sums) and w.keys == ["a", "b"]
    assert cp.load("sink:out", Pos) is None


def test_entry_names_are_sanitized_and_manifest_describes_entries(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    store.write(4, {"source:a/b": Pos(1), "source:a_b": Pos(2)}, meta={})
    d = tmp_path / "chk-0000000004"
    files = sorted(p.name for p in d.iterdir())
    assert MANIFEST in files and all(":" not in f and "/" not in f for f in files)
    manifest = json.loads((d / MANIFEST).read_text())
    assert manifest["format"] == 1 and manifest["epoch"] == 4
    entry = manifest["entries"]["source:a/b"]
    assert entry["type"].endswith("Pos") and len(entry["sha256"]) == 64 and entry["bytes"] > 0
    cp = store.latest()
    assert cp is not None and cp.load("source:a/b", Pos) == Pos(1) and cp.load("source:a_b", Pos) == Pos(2)


def test_wrong_type_and_unknown_name(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 1)
    cp = store.latest()
    assert cp is not None
    with pytest.raises(CheckpointError, match="does not decode as OtherPos"):
        cp.load("source:readings", OtherPos)
    with pytest.raises(KeyError, match="no entry 'nope'"):
        cp.load("nope", Pos)


def test_directory_without_manifest_is_ignored_then_removed(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 1)
    half = tmp_path / "chk-0000000002"
    half.mkdir()
    (half / "000-keys.msgpack").write_bytes(b"\x01")
    cp = store.latest()
    assert cp is not None and cp.epoch == 1
    assert [i.complete for i in store.list()] == [True, False]
    CheckpointStore(tmp_path).write(2, {"k": Pos(2)}, meta={})
    cp = store.latest()
    assert cp is not None and cp.epoch == 2 and cp.load("k", Pos) == Pos(2)


@pytest.mark.parametrize("damage", ["truncate_manifest", "garbage_manifest", "flip_entry", "delete_entry"])
def test_corrupt_newest_falls_back_to_previous(tmp_path: Path, damage: str, caplog: pytest.LogCaptureFixture) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 1)
    _write(store, 2)
    d = tmp_path / "chk-0000000002"
    entry = next(p for p in d.iterdir() if p.name.startswith("000-"))
    if damage == "truncate_manifest":
        data = (d / MANIFEST).read_bytes()
        (d / MANIFEST).write_bytes(data[: len(data) // 2])
    elif damage == "garbage_manifest":
        (d / MANIFEST).write_bytes(b"\x00not json")
    elif damage == "flip_entry":
        data = bytearray(entry.read_bytes())
        data[-1] ^= 0xFF
        entry.write_bytes(bytes(data))
    else:
        entry.unlink()
    with caplog.at_level(logging.WARNING, logger="tidegauge.checkpoint.store"):
        cp = CheckpointStore(tmp_path).latest()
    assert cp is not None and cp.epoch == 1 and cp.load("source:readings", Pos) == Pos(10)
    assert any("corrupt checkpoint 2" in r.getMessage() for r in caplog.records)
    infos = store.list()
    assert [(i.epoch, i.complete) for i in infos] == [(1, True), (2, False)] and infos[1].problem


def test_nothing_readable_strict(tmp_path: Path) -> None:
    assert CheckpointStore(tmp_path / "missing").latest(strict=True) is None
    (tmp_path / "chk-0000000001").mkdir()
    store = CheckpointStore(tmp_path)
    assert store.latest() is None
    with pytest.raises(CheckpointError, match="none of the 1 checkpoints"):
        store.latest(strict=True)


def test_keep_prunes_oldest(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path, keep=2)
    for e in (1, 2, 5, 9):
        _write(store, e)
    assert [i.epoch for i in store.list()] == [5, 9]
    cp = store.latest()
    assert cp is not None and cp.epoch == 9


def test_epochs_must_increase(tmp_path: Path) -> None:
    store = CheckpointStore(tmp_path)
    _write(store, 3)
    with pytest.raises(ValueError, match="epoch 3 is not after the newest checkpoint"):
        _write(store, 3)
    with pytest.raises(ValueError, match="epochs must increase"):
        CheckpointStore(tmp_path).write(2, {}, meta={})


def test_rewriting_an_epoch_after_a_corrupt_newer_one(tmp_path: Path) -> None:
    """Restored from 1 because 2 is corrupt: the runner writes 2 again, replacing the debris."""
    store = CheckpointStore(tmp_path)
    _write(store, 1)
    _write(store, 2)
    (tmp_path / "chk-0000000002" / MANIFEST).write_bytes(b"{")
    fresh = CheckpointStore(tmp_path)
    assert fresh.latest() is not None
    _write(fresh, 2)
    cp = fresh.latest()
    assert cp is not None and cp.epoch == 2


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="keep=0"):
        CheckpointStore(tmp_path, keep=0)
    store = CheckpointStore(tmp_path)
    with pytest.raises(TypeError, match=r"msgspec\.Struct"):
        store.write(1, {"x": {"a": 1}}, meta={})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match="meta"):
        store.write(1, {}, meta={"x": [1]})  # type: ignore[dict-item]
    with pytest.raises(ValueError, match="epoch=-1"):
        store.write(-1, {}, meta={})
