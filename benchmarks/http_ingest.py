"""HTTP NDJSON ingest: tidegauge's server against a plain Starlette+msgspec endpoint, in the same run.

Throughput: batches of 1,000 readings POSTed by aiohttp over ``--conc`` keep-alive connections for
``--duration`` s, against (a) the plain consumer of ``/work/shared/bench/ingest/app.py`` (decode only) and
(b) ``tidegauge serve`` with validation, bearer auth, the durable intake log and the flow (http source ->
z-score detector -> sink). Reported as readings/s and the ratio b/a, and as the server's CPU seconds per
million readings (all its threads, over the measured window; ``cpu_ratio`` = b/a): on a shared machine the
throughput of each moves with the other processes' load, its CPU per reading much less.

Latency: readings posted at ``--rate`` readings/s (batches of 100, each reading stamped with its send time
``sent_at``); the flow's sink records ``now - sent_at`` per detector output row: post to detector output.

usage: python benchmarks/http_ingest.py [--duration 10] [--conc 8] [--rate 10000] [--durability fsync]
[--flow thread|loop]
Internal modes: ``--serve PORT DIR DURABILITY`` (the tidegauge server), ``--load URL BATCH SECONDS CONC [PID]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _latency import LatencySink  # benchmarks/_latency.py (run as a script)

BENCH = Path("/work/shared/bench/ingest")
TOKEN = "bench-token"


def _reading_bodies(n_bodies: int, batch: int, *, stamp: bool = False) -> list[bytes]:
    sys.path.insert(0, str(BENCH))
    from common import build_ndjson_bodies  # the reference's payloads, identical for both servers

    return list(build_ndjson_bodies(n_bodies, batch))


# -- the tidegauge server (subprocess) -----------------------------------------------------------

def serve_main(port: int, tmp: Path, durability: str, result_file: Path, flow_mode: str = "thread") -> None:
    import uvloop

    from tidegauge.connectors.http import READING_SCHEMA, HttpIngestSource
    from tidegauge.dataflow import CheckpointConfig, Flow, Runner
    from tidegauge.detectors import ZScore
    from tidegauge.server import ServerConfig, TokenConfig, hash_token, serve

    source = HttpIngestSource(tmp / "intake", schema={**READING_SCHEMA, "sent_at": "float"},
                              durability=durability)  # type: ignore[arg-type]
    flow = Flow("bench")
    sink = LatencySink()
    flow.source(source).detect(ZScore(["temperature"], key="sensor_id")).sink(sink)  # type: ignore[arg-type]
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp / "cp", interval="2s"), max_delay="1ms")
    config = ServerConfig(port=port, tokens=[TokenConfig("bench", ["ingest", "read"], hash=hash_token(TOKEN))],
                          max_body_bytes="16MiB", open_metrics=True, flow=flow_mode)  # type: ignore[arg-type]

    uvloop.run(serve(runner, config))
    lat = sorted(sink.lat)

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

    result_file.write_text(json.dumps({"rows": sink.rows, "n_latency": len(lat),
                                       "p50_ms": q(0.5), "p99_ms": q(0.99), "max_ms": q(1.0)}))


# -- load generation -----------------------------------------------------------------------------
async def _load(url: str, bodies: list[bytes], seconds: float, conc: int, batch: int,
                server_pid: int | None = None) -> dict[str, float]:
    import aiohttp
    import psutil  # type: ignore[import-untyped]

    server = psutil.Process(server_pid) if server_pid else None

    hdrs = {"content-type": "application/x-ndjson", "authorization": f"Bearer {TOKEN}"}
    st = {"ok": 0, "err": 0, "503": 0}

    async def worker(session: Any, k: int, stop: float, count: bool) -> None:
        i = k
        while time.monotonic() < stop:
            async with session.post(url, data=bodies[i % len(bodies)], headers=hdrs) as r:
                content = await r.read()
            if count:
                if r.status == 200 and json.loads(content)["accepted"] == batch:
                    st["ok"] += 1
                elif r.status == 503:
                    st["503"] += 1
                else:
                    st["err"] += 1
            i += conc

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=conc)) as session:
        await asyncio.gather(*(worker(session, k, time.monotonic() + 2, False) for k in range(conc)))  # warm-up
        # the server's CPU (all its threads) over the measured window: per reading, the figure that stays
        # put when other processes on the machine take cores away (throughput does not)
        c0 = sum(server.cpu_times()[:2]) if server else 0.0
        t0 = time.monotonic()
        await asyncio.gather(*(worker(session, k, t0 + seconds, True) for k in range(conc)))
        el = time.monotonic() - t0
        cpu = sum(server.cpu_times()[:2]) - c0 if server else float("nan")
    readings = st["ok"] * batch
    return {"readings_per_s": readings / el, "ok": st["ok"], "err": st["err"], "overloaded": st["503"],
            "server_cpu_s_per_M": cpu / readings * 1e6 if readings else float("nan")}


async def _paced(url: str, rate: int, seconds: float, batch: int = 100) -> dict[str, int]:
    """``rate`` readings/s in batches of ``batch``, each reading stamped with its send time."""
    import aiohttp

    readings = [json.loads(b) for b in _reading_bodies(1, 1000)[0].splitlines()]
    hdrs = {"content-type": "application/x-ndjson", "authorization": f"Bearer {TOKEN}"}
    interval, sent, bad = batch / rate, 0, 0
    pending: set[asyncio.Task[None]] = set()
    async with aiohttp.ClientSession() as session:
        async def post(body: bytes) -> None:
            nonlocal bad
            async with session.post(url, data=body, headers=hdrs) as r:
                await r.read()
                bad += r.status != 200

        start = time.monotonic()
        n = 0
        warmup = 2.0  # s at the same rate, not measured (sent_at null): numba compiles, caches fill
        while time.monotonic() - start < seconds + warmup:
            now: float | None = time.time() if time.monotonic() - start >= warmup else None
            body = b"\n".join(json.dumps({**readings[(n * batch + j) % 1000], "sent_at": now}).encode()
                              for j in range(batch))
            t = asyncio.create_task(post(body))
            pending.add(t)
            t.add_done_callback(pending.discard)
            sent += batch if now is not None else 0
            n += 1
            await asyncio.sleep(max(0.0, start + n * interval - time.monotonic()))
        await asyncio.gather(*pending)
    return {"sent": sent, "bad_status": bad}


def load_main(url: str, batch: int, seconds: float, conc: int, server_pid: int | None = None) -> None:
    import uvloop

    bodies = _reading_bodies(32, batch)
    print(json.dumps(uvloop.run(_load(url, bodies, seconds, conc, batch, server_pid))), flush=True)


# -- orchestration -------------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on port {port}")


def _run_load(url: str, args: argparse.Namespace, server_pid: int) -> dict[str, float]:
    out = subprocess.run([sys.executable, __file__, "--load", url, "1000", str(args.duration), str(args.conc),
                          str(server_pid)], capture_output=True, text=True, check=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--conc", type=int, default=8)
    ap.add_argument("--rate", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--durability", default="fsync", choices=["fsync", "os"])
    ap.add_argument("--flow", default="thread", choices=["thread", "loop"],
                    help="server.flow: the flow in its own thread (default) or in the server's event loop")
    args = ap.parse_args()
    plain, ours = [], []
    for _ in range(args.reps):
        port = _port()
        ref = subprocess.Popen([sys.executable, "-m", "uvicorn", "app:app", "--host", "127.0.0.1", "--port",
                                str(port), "--loop", "uvloop", "--http", "httptools", "--log-level", "warning"],
                               cwd=BENCH)
        try:
            _wait_port(port)
            plain.append(_run_load(f"http://127.0.0.1:{port}/ingest", args, ref.pid))
        finally:
            _stop(ref)
        with tempfile.TemporaryDirectory() as tmp:
            port = _port()
            srv = subprocess.Popen([sys.executable, __file__, "--serve", str(port), tmp, args.durability, args.flow])
            try:
                _wait_port(port)
                ours.append(_run_load(f"http://127.0.0.1:{port}/api/v1/ingest", args, srv.pid))
            finally:
                _stop(srv)
        print(f"plain {plain[-1]}\ntidegauge {ours[-1]}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        port = _port()
        srv = subprocess.Popen([sys.executable, __file__, "--serve", str(port), tmp, args.durability, args.flow])
        try:
            _wait_port(port)
            import uvloop

            paced = uvloop.run(_paced(f"http://127.0.0.1:{port}/api/v1/ingest", args.rate, args.duration))
        finally:
            _stop(srv)
        latency = json.loads((Path(tmp) / "result.json").read_text())
    p = statistics.median(r["readings_per_s"] for r in plain)
    o = statistics.median(r["readings_per_s"] for r in ours)
    pc = statistics.median(r["server_cpu_s_per_M"] for r in plain)
    oc = statistics.median(r["server_cpu_s_per_M"] for r in ours)
    print(json.dumps({"plain_readings_per_s": round(p), "tidegauge_readings_per_s": round(o),
                      "ratio": round(o / p, 3), "plain_cpu_s_per_M": round(pc, 3),
                      "tidegauge_cpu_s_per_M": round(oc, 3), "cpu_ratio": round(oc / pc, 3),
                      "durability": args.durability, "flow": args.flow,
                      "latency_rate": args.rate, **paced, **latency}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        serve_main(int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[3]) / "result.json",
                   sys.argv[5] if len(sys.argv) > 5 else "thread")
    elif len(sys.argv) > 1 and sys.argv[1] == "--load":
        load_main(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]),
                  int(sys.argv[6]) if len(sys.argv) > 6 else None)
    else:
        os.environ.setdefault("PYTHONHASHSEED", "0")
        main()
