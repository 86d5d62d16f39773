"""Live endpoints for the dashboard, served from a :class:`~tidegauge.server.live.LiveState` (memory only).

=====================================  =====  ===============================================================
``GET /api/v1/live/overview``          read   fleet figures, per-second series, status counts and string,
                                              alerts by state and severity, pipeline steps
``GET /api/v1/live/sensors``           read   every sensor's id, type, latitude, longitude (index order)
``GET /api/v1/live/sensors/{id}``      read   one sensor: latest values, per-second series, latest window
``GET /api/v1/live/ws``                read   WebSocket: the overview once a second; send
                                              ``{"watch": "<sensor id>"}`` to also get that sensor's detail
=====================================  =====  ===============================================================

The overview's ``status`` is one character per sensor (``0`` normal, ``1`` warning, ``2`` alert) in the
order of ``/live/sensors``: 10 KB a second for 10,000 sensors. A snapshot is computed at most twice a
second however many pages are open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from tidegauge.server.ingest import error, json_response
from tidegauge.server.live import LiveState

if TYPE_CHECKING:
    from tidegauge.alerting.manager import AlertManager
    from tidegauge.server.app import ServerState

__all__ = ["LiveApi", "live_routes"]

logger = logging.getLogger(__name__)

_PUSH_S = 1.0  # the dashboard's refresh period: "at least once a second"
_CACHE_S = 0.5  # one snapshot serves every page that asks within this long
_SEVERITIES = ("critical", "major", "minor", "warning", "info")


class LiveApi:
    """The live handlers, bound to a state, the runner and (optionally) the alert manager."""

    def __init__(self, live: LiveState, runner: Any, alerts: AlertManager | None) -> None:
        self.live, self.runner, self.alerts = live, runner, alerts
        self._cache: tuple[float, dict[str, Any]] | None = None
        self._prev: tuple[float, dict[str, int]] | None = None
        self._rates: dict[str, float] = {}

    # -- snapshots -------------------------------------------------------------------------------
    def overview(self) -> dict[str, Any]:
        now = time.monotonic()
        if self._cache is not None and now - self._cache[0] < _CACHE_S:
            return self._cache[1]
        live = self.live
        codes = live.statuses()
        series = live.fleet_series()
        p50, p99 = live.recent_latency()
        recent = series["readings"][-10:]
        rates = series["anomaly_rate"][-10:]
        n_recent = sum(recent)
        anomaly_rate = (sum(r * n for r, n in zip(rates, recent, strict=True)) / n_recent) if n_recent else 0.0
        snap = {
            "type": "overview",
            "at": int(time.time() * 1000),
            "readings_per_s": series["readings"][-1] if series["readings"] else 0,
            "latency_p50_ms": p50, "latency_p99_ms": p99,
            "anomaly_rate": anomaly_rate,
            "sensors": len(codes),
            "status_counts": live.status_counts(codes),
            "status": codes.tobytes().translate(bytes.maketrans(b"\x00\x01\x02", b"012")).decode("ascii"),
            "series": series,
            "totals": {k: v for k, v in live.totals().items() if k != "dead_by_stage"},
            "alerts": self._alerts(),
            "pipeline": self.pipeline(),
        }
        self._cache = (now, snap)
        return snap

    def _alerts(self) -> dict[str, Any]:
        if self.alerts is None:
            return {"enabled": False, "by_state": {}, "firing_by_severity": {}}
        alerts = self.alerts.list_alerts()
        by_state = Counter(a.state for a in alerts)
        firing = Counter(a.severity for a in alerts if a.state == "firing")
        return {"enabled": True, "by_state": dict(by_state),
                "firing_by_severity": {s: firing.get(s, 0) for s in (*_SEVERITIES, *sorted(set(firing) -
                                                                                             set(_SEVERITIES)))}}

    def pipeline(self) -> list[dict[str, Any]]:
        """Each node of the flow: rate, totals, queue depth, watermark lag, late, dead letters, checkpoint age."""
        m = self.runner.metrics
        now = time.time()
        counts: dict[str, int] = {}
        nodes = self.runner.flow.nodes
        for nid, node in nodes.items():
            if node.kind == "dead_letters":
                counts[nid] = int(m.dead_letters_total)
            else:
                counts[nid] = int(m.records_in.get(nid, 0) if node.kind == "source" else m.records_out.get(nid, 0))
        mono = time.monotonic()
        if self._prev is None:
            self._prev = (mono, counts)
        elif mono - self._prev[0] >= 1.0:
            dt = mono - self._prev[0]
            self._rates = {k: (v - self._prev[1].get(k, 0)) / dt for k, v in counts.items()}
            self._prev = (mono, counts)
        wm = m.watermark_us
        lag = None if wm is None else max(0.0, now - wm / 1e6)
        cp = m.last_checkpoint_at_us
        cp_age = None if cp is None else max(0.0, now - cp / 1e6)
        dead = self.live.totals()["dead_by_stage"]
        rows = []
        for nid, node in nodes.items():
            inputs = [src for src, _port in node.inputs]
            received = counts[nid] if node.kind == "source" else sum(counts.get(src, 0) for src in inputs)
            rate = self._rates.get(nid, 0.0) if node.kind == "source" else sum(self._rates.get(s, 0.0)
                                                                               for s in inputs)
            rows.append({
                "id": nid, "kind": node.kind,
                "type": "dead-letter output" if node.kind == "dead_letters" else type(node.definition).__name__,
                "inputs": inputs, "records_in": received, "records_out": counts[nid],
                "rate_per_s": round(rate, 1),
                # steps are chained: a batch goes through them synchronously; the one queue is the sources'
                "queue_depth": m.queue_depth if node.kind == "source" else 0,
                "watermark_lag_s": None if lag is None else round(lag, 3),
                "late": int(m.late.get(nid, 0)), "dead_letters": int(dead.get(nid, 0)),
                "checkpoint_age_s": None if cp_age is None else round(cp_age, 1),
            })
        return rows

    # -- handlers --------------------------------------------------------------------------------
    @staticmethod
    def _who(request: Request) -> Response | None:
        state: ServerState = request.app.state.tg
        who = state.authorize(request.headers.get("authorization"), "read")
        return who if isinstance(who, Response) else None

    async def get_overview(self, request: Request) -> Response:
        return self._who(request) or json_response(self.overview())

    async def get_sensors(self, request: Request) -> Response:
        return self._who(request) or json_response(self.live.sensors())

    async def get_sensor(self, request: Request) -> Response:
        denied = self._who(request)
        if denied is not None:
            return denied
        sid = request.path_params["sensor_id"]
        i = self.live.sensor_index(sid)
        if i is None:
            return error(404, f"no live data for sensor {sid!r} (list them with GET /api/v1/live/sensors)")
        return json_response(self.live.sensor_detail(i))

    async def websocket(self, ws: WebSocket) -> None:
        state: ServerState = ws.app.state.tg
        who = state.authorize(ws.headers.get("authorization"), "read")
        if not hasattr(who, "scopes"):
            await ws.close(code=1008)
            return
        await ws.accept()
        watch: list[str | None] = [None]
        reader = asyncio.create_task(self._read(ws, watch))
        try:
            while not reader.done():
                await ws.send_text(json.dumps(self.overview(), allow_nan=False, default=str))
                if watch[0] is not None:
                    i = self.live.sensor_index(watch[0])
                    if i is not None:
                        detail = {"type": "sensor", **self.live.sensor_detail(i)}
                        await ws.send_text(json.dumps(detail, allow_nan=False, default=str))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(reader), _PUSH_S)
        except (WebSocketDisconnect, RuntimeError, ValueError) as exc:
            logger.debug("live websocket closed: %s", exc)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    @staticmethod
    async def _read(ws: WebSocket, watch: list[str | None]) -> None:
        while True:
            try:
                msg = json.loads(await ws.receive_text())
            except ValueError:
                continue
            if isinstance(msg, dict) and "watch" in msg:
                value = msg["watch"]
                watch[0] = value if isinstance(value, str) else None


def live_routes(live: LiveState, runner: Any, alerts: AlertManager | None) -> list[BaseRoute]:
    api = LiveApi(live, runner, alerts)
    return [
        Route("/api/v1/live/overview", api.get_overview),
        Route("/api/v1/live/sensors", api.get_sensors),
        Route("/api/v1/live/sensors/{sensor_id}", api.get_sensor),
        WebSocketRoute("/api/v1/live/ws", api.websocket),
    ]
