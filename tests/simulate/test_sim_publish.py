"""`tidegauge simulate --to URL`: every scheme, counting what arrives at the real servers."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from typer.testing import CliRunner

import tidegauge.cli as cli
from tests.connectors.servers import require, unique
from tests.net import free_port, wait_port
from tidegauge.simulate.publish import parse_target

ROWS = 1_000
ARGS = ["simulate", "--rows", str(ROWS), "--sensors", "5", "--rate", "20000", "--batch", "100",
        "--start", "2026-01-01T00:00:00Z"]


@pytest.fixture(scope="module", autouse=True)
def _commands() -> None:
    cli._register()


def simulate(to: str, *extra: str) -> str:
    result = CliRunner().invoke(cli.app, [*ARGS, "--to", to, *extra])
    assert result.exit_code == 0, result.output
    assert f"published {ROWS:,} readings" in result.output
    return result.output


def test_bad_urls_are_refused_with_examples() -> None:
    with pytest.raises(ValueError, match=r"unknown scheme 'kafka'.*mqtt://"):
        parse_target("kafka://h/t")
    with pytest.raises(ValueError, match="give a host and a stream key"):
        parse_target("redis://127.0.0.1:6379")


def test_token_flag_shows_its_environment_variable() -> None:
    result = CliRunner().invoke(cli.app, ["simulate", "--help"], env={"COLUMNS": "200"})
    assert "TIDEGAUGE_SIM_TOKEN" in result.output and "TIDEGAUGE_SIM_TO" in result.output


@pytest.mark.server
def test_redis() -> None:
    require("redis")
    import redis
    key = unique("tg_sim")
    simulate(f"redis://127.0.0.1:6379/{key}")
    client = redis.Redis()
    try:
        entries = client.xrange(key)
        readings = [r for _id, fields in entries for r in json.loads(fields[b"data"])]
    finally:
        client.delete(key)
        client.close()
    assert len(entries) == ROWS // 100 and len(readings) == ROWS
    assert not any(k.startswith("truth_") for k in readings[0])


@pytest.mark.server
def test_nats_on_a_fresh_subject_makes_its_stream() -> None:
    """No stream is made beforehand: ``simulate`` makes one storing the subject (``<base>.>``), as a new user's
    first run on a fresh server needs."""
    require("nats")
    import nats

    base = unique("tgsim")

    async def received() -> tuple[str, list[str], int]:
        nc = await nats.connect("nats://127.0.0.1:4222")
        js = nc.jetstream()
        stream = await js.find_stream_name_by_subject(f"{base}.>")
        try:
            subjects = (await js.stream_info(stream)).config.subjects or []
            sub = await js.pull_subscribe(f"{base}.>", stream=stream)
            n = 0
            while True:
                try:
                    msgs = await sub.fetch(100, timeout=1)
                except TimeoutError:
                    return stream, subjects, n
                n += sum(len(json.loads(m.data)) for m in msgs)
        finally:
            await js.delete_stream(stream)
            await nc.close()

    simulate(f"nats://127.0.0.1:4222/{base}.{{sensor_id}}")
    stream, subjects, n = asyncio.run(received())
    assert (stream, subjects, n) == (base.upper() + "_ALL", [f"{base}.>"], ROWS)


@pytest.mark.server
def test_mqtt() -> None:
    require("mosquitto")
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    base = unique("tgsim")
    got: list[int] = []
    subscribed = threading.Event()
    client = paho.Client(CallbackAPIVersion.VERSION2)
    client.on_message = lambda _c, _u, msg: got.append(len(json.loads(msg.payload)))
    client.on_subscribe = lambda *_a: subscribed.set()
    client.connect("127.0.0.1", 1883)
    client.subscribe(f"{base}/+/telemetry", qos=1)
    client.loop_start()
    try:
        assert subscribed.wait(10), "no SUBACK from Mosquitto"
        simulate(f"mqtt://127.0.0.1:1883/{base}/{{sensor_id}}/telemetry")
        for _ in range(200):  # bounds a hang only
            if sum(got) >= ROWS:
                break
            threading.Event().wait(0.05)
    finally:
        client.loop_stop()
        client.disconnect()
    assert sum(got) == ROWS


def test_http(tmp_path: Path) -> None:
    import socket

    from tidegauge.cli.serve import build_served_pipeline
    from tidegauge.server import hash_token
    from tidegauge.server import serve as serve_

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = tmp_path / "pipeline.yaml"
    path.write_text(f"""
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out.parquet}}
checkpoint: {{dir: cp, interval: 100ms}}
server: {{port: {port}, tokens: [{{name: sim, hash: "{hash_token('s3cret')}", scopes: [ingest]}}]}}
""")
    runner, config = build_served_pipeline(path)
    started = asyncio.Event()

    async def main() -> None:
        task = asyncio.create_task(serve_(runner, config, started=started, handle_signals=False))
        await started.wait()
        out = await asyncio.to_thread(simulate, f"http://127.0.0.1:{port}/api/v1/ingest", "--token", "s3cret")
        assert "1,000 readings" in out
        for _ in range(400):  # until the flow has read all of it (bounds a hang only)
            if runner.metrics.records_in["http"] >= ROWS:
                break
            await asyncio.sleep(0.05)
        runner.stop()
        await task

    asyncio.run(main())
    assert runner.metrics.records_in["http"] == ROWS


def run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``python -m tidegauge ...`` as a user runs it (``timeout`` only bounds a hang)."""
    env = {k: v for k, v in os.environ.items() if k != "TIDEGAUGE_DEBUG"}
    return subprocess.run([sys.executable, "-m", "tidegauge", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def assert_one_line_error(result: subprocess.CompletedProcess[str], *expected: str) -> None:
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert "Traceback" not in result.stderr, result.stderr
    err = result.stderr.strip()
    assert err.startswith("error:") and "\n" not in err, err
    for part in expected:
        assert part in err, (part, err)


@pytest.mark.parametrize("scheme", ["mqtt", "nats", "redis", "http"])
def test_an_unreachable_target_is_one_line_naming_it(scheme: str) -> None:
    port = free_port()  # nothing listens there
    path = {"mqtt": "t/{sensor_id}", "nats": "t.{sensor_id}", "redis": "k", "http": "api/v1/ingest"}[scheme]
    url = f"{scheme}://127.0.0.1:{port}/{path}"
    result = run_cli("simulate", "--to", url, "--rate", "10", "--rows", "20")
    assert_one_line_error(result, f"cannot reach {scheme}://127.0.0.1:{port}", url, "connection refused")


@pytest.mark.parametrize(("url", "expected"), [
    ("kafka://127.0.0.1:9092/t", "unknown scheme 'kafka'"),
    ("mqtt://[::1/t", "Invalid IPv6 URL"),
    ("mqtt://127.0.0.1:99999/t", "Port out of range"),
    ("mqtt://127.0.0.1:x/t", "Port could not be cast"),
    ("mqtt://127.0.0.1:0/t", "port 0"),
    ("nats://127.0.0.1:4222", "give a host and a subject"),
])
def test_a_malformed_target_is_one_line_naming_it(url: str, expected: str) -> None:
    assert_one_line_error(run_cli("simulate", "--to", url, "--rows", "20"), repr(url), expected)


@pytest.mark.server
@pytest.mark.parametrize("scheme", ["mqtt", "nats"])
def test_a_target_going_away_mid_run_ends_it_with_one_line(scheme: str, tmp_path: Path) -> None:
    """The broker stops while ``simulate`` publishes: the run ends with an error, not a hang or a traceback."""
    require("mosquitto" if scheme == "mqtt" else "nats")  # their packages provide the private brokers
    port = free_port()
    if scheme == "mqtt":
        args = [shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-p", str(port)]
        url = f"mqtt://127.0.0.1:{port}/tg/{{sensor_id}}"
    else:
        args = [shutil.which("nats-server") or "/usr/sbin/nats-server", "-a", "127.0.0.1", "-p", str(port), "-js",
                "-sd", str(tmp_path / "store")]
        url = f"nats://127.0.0.1:{port}/tg.{{sensor_id}}"
    broker = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    async def run() -> tuple[int, str]:
        wait_port(port, timeout=20, proc=broker, what=args[0])
        first = await messages_seen(scheme, port)
        sim = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tidegauge", "simulate", "--to", url, "--rate", "200", "--batch", "10",
            "--rows", "1000000", stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
        try:
            await asyncio.wait_for(first, 30)  # a few batches went through: now the broker goes away
            broker.terminate()
            await asyncio.to_thread(broker.wait, 20)
            _out, err = await asyncio.wait_for(sim.communicate(), 60)  # bounds a hang only
            return sim.returncode or 0, err.decode()
        finally:
            if sim.returncode is None:
                sim.kill()
                await sim.wait()

    try:
        code, err = asyncio.run(run())
    finally:
        if broker.poll() is None:
            broker.kill()
            broker.wait()
    assert code == 2, err
    assert "Traceback" not in err and err.strip().count("\n") == 0, err
    assert f"lost {scheme}://127.0.0.1:{port} after" in err and url in err, err


MESSAGES = 50
"""Messages seen before the broker is stopped: ``simulate`` has had some acknowledged by then (10 readings a
batch, one message per sensor in it)."""


async def messages_seen(scheme: str, port: int) -> asyncio.Future[None]:
    """Subscribe to everything ``simulate`` publishes to the broker on ``port``; the future is done at the
    ``MESSAGES``-th message, a few batches in."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    if scheme == "mqtt":
        sub = await asyncio.create_subprocess_exec(
            shutil.which("mosquitto_sub") or "/usr/bin/mosquitto_sub", "-p", str(port), "-t", "tg/#",
            "-C", str(MESSAGES),
            stdout=asyncio.subprocess.DEVNULL)
        await asyncio.sleep(0.5)  # mosquitto_sub has subscribed (it only needs to see a later message)
        asyncio.get_running_loop().create_task(sub.wait()).add_done_callback(lambda _t: done.set_result(None))
        return done
    import nats

    nc = await nats.connect(f"nats://127.0.0.1:{port}", max_reconnect_attempts=0)

    seen = 0

    async def on(_msg: object) -> None:
        nonlocal seen
        seen += 1
        if seen == MESSAGES:
            done.set_result(None)
            await nc.close()

    await nc.subscribe("tg.>", cb=on)
    return done
