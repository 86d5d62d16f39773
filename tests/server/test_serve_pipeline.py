"""A pipeline file with a server section (as ``tidegauge serve`` runs it) and the query endpoints."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from tests.server.helpers import TOKENS
from tidegauge.cli.serve import build_served_pipeline
from tidegauge.server import build_app, hash_token

PIPELINE = f"""
name: served
source: {{http: {{log_dir: intake, durability: os}}}}
steps:
  - filter: "temperature > -100"
sink: {{file: out/readings.parquet}}
dead_letter: {{file: out/dead.parquet}}
checkpoint: {{dir: cp, interval: 100ms}}
server:
  tokens:
    - {{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest]}}
    - {{name: ops, env: TG_OPS, scopes: [read]}}
  history: {{readings: out/readings.parquet, dead_letters: out/dead.parquet}}
"""


def test_served_pipeline_ingest_then_query(tmp_path: Path) -> None:
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE)
    runner, config = build_served_pipeline(path)
    app = build_app(runner, config, environ={"TG_OPS": TOKENS["read"]})
    lines = [f'{{"sensor_id":"S{i % 3}","timestamp":{1767225600 + i},"temperature":{i}}}' for i in range(30)]

    async def main() -> None:
        task = asyncio.create_task(runner.run_async())
        while runner.flow.nodes["http"].definition.logic is None:  # 503 until the flow reads the source
            await asyncio.sleep(0.005)
        read = {"authorization": f"Bearer {TOKENS['read']}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg") as c:
            r = await c.post("/api/v1/ingest", content="\n".join([*lines, "{bad"]).encode(),
                             headers={"authorization": f"Bearer {TOKENS['ingest']}"})
            assert r.json().get("accepted") == 30, r.text
            for _ in range(500):  # until a checkpoint committed the parts the queries read
                resp = (await c.get("/api/v1/sensors", headers=read)).json()
                assert "rows" in resp, resp
                got = resp["rows"]
                if len(got) == 3:
                    break
                await asyncio.sleep(0.02)
            assert sorted((row["sensor_id"], row["temperature"]) for row in got) == [
                ("S0", 27.0), ("S1", 28.0), ("S2", 29.0)]
            series = (await c.get("/api/v1/sensors/S1/series", headers=read,
                                  params={"window": "15s", "agg": "count", "field": "temperature"})).json()
            assert [row["n"] for row in series["rows"]] == [5, 5]
            bad = await c.get("/api/v1/sensors/S1/series", headers=read, params={"start": "yesterday"})
            assert bad.status_code == 400 and "ISO 8601" in bad.json()["error"]
            for _ in range(500):
                dead = (await c.get("/api/v1/dead-letters", headers=read)).json()["rows"]
                if dead:
                    break
                await asyncio.sleep(0.02)
            assert dead[0]["payload"] == "{bad"
            assert (await c.get("/api/v1/sensors")).status_code == 401
        runner.stop()
        await task

    asyncio.run(main())


def test_dead_letters_in_jsonl_are_served_from_the_pipelines_own_dead_letter_sink(tmp_path: Path) -> None:
    """No ``history.dead_letters``: the endpoint reads the pipeline's ``dead_letter`` file, here JSONL."""
    path = tmp_path / "pipeline.yaml"
    path.write_text(PIPELINE.replace("dead_letter: {file: out/dead.parquet}", "dead_letter: {file: out/dead.jsonl}")
                    .replace(", dead_letters: out/dead.parquet", ""))
    runner, config = build_served_pipeline(path)
    assert config.history.dead_letters == str(tmp_path / "out/dead.jsonl")
    app = build_app(runner, config, environ={"TG_OPS": TOKENS["read"]})

    async def main() -> list[dict[str, object]]:
        task = asyncio.create_task(runner.run_async())
        while runner.flow.nodes["http"].definition.logic is None:
            await asyncio.sleep(0.005)
        read = {"authorization": f"Bearer {TOKENS['read']}"}
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://tg") as c:
            r = await c.post("/api/v1/ingest", content=b'{"sensor_id":"a","timestamp":1767225600}\n{bad\n[1]',
                             headers={"authorization": f"Bearer {TOKENS['ingest']}"})
            assert r.json()["accepted"] == 1 and len(r.json()["rejected"]) == 2, r.text
            dead: list[dict[str, object]] = []
            for _ in range(500):  # until a checkpoint committed the part
                dead = (await c.get("/api/v1/dead-letters", headers=read)).json()["rows"]
                if len(dead) == 2:
                    break
                await asyncio.sleep(0.02)
        runner.stop()
        await task
        return dead

    dead = asyncio.run(main())
    assert sorted(str(row["payload"]) for row in dead) == ["[1]", "{bad"]
    assert all(row["reason"] for row in dead)
    assert list((tmp_path / "out/dead.jsonl.parts").glob("*.jsonl"))


def test_hash_token_needs_no_pipeline_and_serve_without_one_says_so() -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "tidegauge", "serve", "--hash-token", "s3cret"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == hash_token("s3cret")
    bare = subprocess.run([sys.executable, "-m", "tidegauge", "serve"], capture_output=True, text=True, timeout=60)
    assert bare.returncode == 2 and "needs a pipeline file" in bare.stderr


def test_serve_on_a_port_in_use_is_a_one_line_error(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "p.yaml").write_text(
            "name: s\nsource: {http: {log_dir: intake}}\nsink: {file: out.parquet}\n"
            f"server: {{port: {port}, tokens: [{{name: a, env: TG_X, scopes: [read]}}]}}\n")
        done = subprocess.run([sys.executable, "-m", "tidegauge", "serve", "p.yaml"], cwd=tmp_path, text=True,
                              capture_output=True, timeout=120, env={**__import__("os").environ, "TG_X": "t"})
    assert done.returncode == 2, done.stderr
    assert f"server 127.0.0.1:{port}: cannot listen there" in done.stderr and "Traceback" not in done.stderr


def _serve_and_read_startup(tmp_path: Path, server: str, *, scheme: str) -> tuple[str, int]:
    """Start ``tidegauge serve`` with ``server`` as its server section; its first stderr line naming a URL
    and the port in it, once that port answers ``/healthz``."""
    import os
    import re
    import signal
    import ssl
    import subprocess
    import sys
    import time

    (tmp_path / "p.yaml").write_text(
        "name: s\nsource: {http: {log_dir: intake, durability: os}}\nsink: {file: out.parquet}\n"
        f"server: {server}\n")
    log = tmp_path / "serve.err"
    with log.open("wb") as err:
        # the CLI's default log level (WARNING): the startup line must show without asking for more
        env = {k: v for k, v in os.environ.items() if k != "TIDEGAUGE_LOG_LEVEL"}
        proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", "p.yaml"], cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=err, env={**env, "TG_X": "t"})
    try:
        deadline = time.monotonic() + 120
        found = None
        while found is None:
            assert proc.poll() is None, f"serve exited with {proc.returncode}: {log.read_text()}"
            assert time.monotonic() < deadline, f"no startup line: {log.read_text()}"
            found = re.search(rf"listening on {scheme}://127\.0\.0\.1:(\d+)", log.read_text())
            time.sleep(0.05)
        port = int(found.group(1))
        verify: ssl.SSLContext | bool = True
        if scheme == "https":
            verify = ssl.create_default_context(cafile=str(tmp_path / "server.pem"))
        assert httpx.get(f"{scheme}://127.0.0.1:{port}/healthz", verify=verify).status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    lines = [line for line in log.read_text().splitlines() if "listening on" in line]
    assert len(lines) == 1, log.read_text()
    return lines[0], port


def test_serve_prints_where_it_listens_with_the_real_port(tmp_path: Path) -> None:
    line, port = _serve_and_read_startup(
        tmp_path, "{port: 0, tokens: [{name: a, env: TG_X, scopes: [read]}]}", scheme="http")
    assert port != 0
    base = f"http://127.0.0.1:{port}"
    assert f"dashboard: {base}/" in line and f"API docs: {base}/openapi.json" in line, line
    assert f"metrics: {base}/metrics (read token)" in line, line


def test_serve_over_tls_prints_an_https_url(tmp_path: Path) -> None:
    from tests.server.test_tls_and_logs import make_cert

    make_cert(tmp_path)
    line, port = _serve_and_read_startup(
        tmp_path, "{port: 0, dashboard: false, open_metrics: true, tls: {cert: server.pem, key: server.key}, "
        "tokens: [{name: a, env: TG_X, scopes: [read]}]}", scheme="https")
    base = f"https://127.0.0.1:{port}"
    assert "dashboard: off" in line and f"metrics: {base}/metrics (open)" in line, line
