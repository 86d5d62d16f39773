"""MQTT intake throughput: tidegauge's MqttSource vs a plain paho subscriber, in the same run.

Starts a private Mosquitto on a free loopback port with ``max_queued_messages 0`` (so the broker buffers
instead of dropping, as in ``../shared/bench/ingest/mosquitto-unbounded.conf``), then for each consumer:
subscribe, start a publisher process (paho, pre-built IoT readings), and count readings until all arrived.

- ``paho``: the reference, like ``shared/bench/ingest/mqtt_sub_paho.py`` (on_message msgspec-decodes into a
  Struct and appends to a list);
- ``tidegauge``: ``MqttSource(...).build(None)`` drained with ``next_batch`` into polars DataFrames, key
  taken from the topic template.

Latency: then a publisher process sends ``RATE`` readings/s (default 10,000, one message each, stamped with
``sent_at``) for ``SECONDS`` (default 10, after 2 s of warm-up) through the same broker into a flow
``MqttSource -> ZScore detector -> sink``; the sink records ``now - sent_at`` per detector output row:
publish to detector output, p50/p99.

The broker runs with ``set_tcp_nodelay true`` and the latency publisher's socket with ``TCP_NODELAY`` (as
the README advises; ``--nagle`` leaves the broker at Mosquitto's default), and each message is stamped as
it is published: with Nagle's algorithm on either side, small writes wait up to 40 ms for a delayed ACK,
which was the whole p99 of a plain paho subscriber as of tidegauge before (2026-12-05).

Usage: ``python benchmarks/mqtt_intake.py [N] [QOS] [ROUNDS] [RATE] [SECONDS] [--nagle]`` (default 100000 0 3
10000 10); prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import msgspec
import paho.mqtt.client as paho
from _latency import LatencySink  # benchmarks/_latency.py (run as a script)

from tidegauge.connectors.mqtt import MqttConnection, MqttSource

PUBLISHER = r"""
import sys, threading, msgspec, paho.mqtt.client as mqtt
port, qos, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
def reading(i):
    return {"timestamp": f"2026-11-22T00:00:{i // 1000 % 60:02d}.{i % 1000:03d}Z", "temperature": 20.5,
            "humidity": 55.1, "pressure": 1011.2, "vibration": 0.4, "power_consumption": 99.9}
msgs = [(f"sensors/S{i % 10000:05d}/telemetry", msgspec.json.encode(reading(i))) for i in range(n)]
ok = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.on_connect = lambda *a: ok.set()
c.connect("127.0.0.1", port); c.loop_start(); ok.wait(10)
print("GO", flush=True); sys.stdin.readline()
infos = []
for i, (t, p) in enumerate(msgs):
    if qos and i >= 5000:
        infos[i - 5000].wait_for_publish(600)
    infos.append(c.publish(t, p, qos=qos))
for info in infos:
    info.wait_for_publish(600)
c.disconnect(); c.loop_stop()
"""


PACED = r"""
import sys, time, threading, msgspec, paho.mqtt.client as mqtt
port, rate, seconds, warm = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
ok = threading.Event()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv311)
c.on_connect = lambda *a: ok.set()
c.connect("127.0.0.1", port); c.loop_start(); ok.wait(10)
import socket
c.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # paho leaves Nagle on: 40 ms stalls
start, i, sent = time.perf_counter(), 0, 0
while (el := time.perf_counter() - start) < seconds + warm:
    measured = el >= warm
    for _ in range(int(el * rate) - i):
        # stamped as each message is published: a burst after a stall of this process (scheduling, GIL
        # with paho's thread) must not count the publisher's own delay as the consumer's
        c.publish(f"sensors/S{i % 10000:05d}/telemetry", msgspec.json.encode(
            {"timestamp": f"2026-11-22T00:{i // 60000 % 60:02d}:{i // 1000 % 60:02d}.{i % 1000:03d}Z",
             "temperature": 20.0 + i % 7, "sent_at": time.time() if measured else None}), qos=0)
        i += 1
        sent += measured
    time.sleep(0.002)
c.disconnect(); c.loop_stop()
print(sent, flush=True)
"""



async def run_latency(port: int, rate: int, seconds: float) -> dict[str, float]:
    from tidegauge.dataflow import Flow, Runner
    from tidegauge.detectors import ZScore

    source = MqttSource("sensors/+/telemetry", connection=MqttConnection(port=port), qos=0,
                        template="sensors/{sensor_id}/telemetry")
    sink = LatencySink()
    flow = Flow("mqtt-latency")
    flow.source(source).detect(ZScore(["temperature"], key="sensor_id")).sink(sink)  # type: ignore[arg-type]
    runner = Runner(flow, max_delay="1ms")
    task = asyncio.create_task(runner.run_async())
    cpu0 = time.process_time()
    while source.logic is None or not source.logic.subscribed.is_set():
        await asyncio.sleep(0.01)
    pub = await asyncio.create_subprocess_exec(sys.executable, "-c", PACED, str(port), str(rate), str(seconds),
                                               "2", stdout=asyncio.subprocess.PIPE)
    out, _ = await pub.communicate()
    sent = int(out.decode().strip() or 0)
    for _ in range(200):  # the last messages' way through
        if len(sink.lat) >= sent:
            break
        await asyncio.sleep(0.01)
    cpu = time.process_time() - cpu0  # building the flow (kernels) included, waiting for the stop excluded
    runner.stop()
    await task
    lat = sorted(sink.lat)

    def q(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else float("nan")

    return {"latency_rate": rate, "latency_sent": sent, "latency_measured": len(lat), "p50_ms": q(0.5),
            "p99_ms": q(0.99), "max_ms": q(1.0), "latency_cpu_us_per_reading": round(cpu / max(len(lat), 1) * 1e6, 1)}


class Reading(msgspec.Struct):
    timestamp: str
    temperature: float
    humidity: float
    pressure: float
    vibration: float
    power_consumption: float


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_publisher(port: int, qos: int, n: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", PUBLISHER, str(port), str(qos), str(n)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "GO"
    return proc


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("\n")
    proc.stdin.flush()


def run_paho(port: int, qos: int, n: int) -> tuple[int, float, float]:
    dec = msgspec.json.Decoder(Reading)
    out: list[Reading] = []
    subscribed = threading.Event()
    c = paho.Client(paho.CallbackAPIVersion.VERSION2, protocol=paho.MQTTv311)
    c.on_connect = lambda cl, *a: cl.subscribe("sensors/+/telemetry", qos=qos)
    c.on_subscribe = lambda *a: subscribed.set()
    c.on_message = lambda _c, _u, m: out.append(dec.decode(m.payload))
    c.connect("127.0.0.1", port)
    c.loop_start()
    assert subscribed.wait(10)
    pub = start_publisher(port, qos, n)
    t0, cpu0 = time.perf_counter(), time.process_time()
    go(pub)
    deadline = t0 + 600
    while len(out) < n and time.perf_counter() < deadline:
        time.sleep(0.005)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    c.disconnect()
    c.loop_stop()
    pub.wait()
    return len(out), elapsed, cpu


async def run_tidegauge(port: int, qos: int, n: int) -> tuple[int, float, float]:
    source = MqttSource("sensors/+/telemetry", connection=MqttConnection(port=port), qos=1 if qos else 0,
                        template="sensors/{sensor_id}/telemetry")
    logic = source.build(None)
    while not logic.subscribed.is_set():
        await asyncio.sleep(0.01)
    pub = start_publisher(port, qos, n)
    got = 0
    t0, cpu0 = time.perf_counter(), time.process_time()
    go(pub)
    deadline = t0 + 600
    while got < n and time.perf_counter() < deadline:
        df = await logic.next_batch(65_536, 0.005)
        got += 0 if df is None else df.height
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    await logic.close()
    pub.wait()
    return got, elapsed, cpu


def main() -> None:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    n = int(args[0]) if len(args) > 0 else 100_000
    qos = int(args[1]) if len(args) > 1 else 0
    rounds = int(args[2]) if len(args) > 2 else 3
    rate = int(args[3]) if len(args) > 3 else 10_000
    seconds = float(args[4]) if len(args) > 4 else 10.0
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    port = free_port()
    workdir = Path(tempfile.mkdtemp(prefix="tg-mqtt-bench-"))
    conf = workdir / "mosquitto.conf"
    # the settings the README tells users to make: no per-client queue limit (drops), no Nagle delay
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 0\n"
                    f"{'' if '--nagle' in sys.argv else 'set_tcp_nodelay true'}\n")
    broker = subprocess.Popen([binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        rates: dict[str, list[float]] = {"paho": [], "tidegauge": []}
        cpus: dict[str, list[float]] = {"paho": [], "tidegauge": []}
        lost: dict[str, int] = {"paho": 0, "tidegauge": 0}
        for _ in range(rounds):  # interleaved, so drift in machine load hits both
            got, s, cpu = run_paho(port, qos, n)
            rates["paho"].append(got / s)
            cpus["paho"].append(cpu / max(got, 1) * 1e6)
            lost["paho"] += n - got
            got, s, cpu = asyncio.run(run_tidegauge(port, qos, n))
            rates["tidegauge"].append(got / s)
            cpus["tidegauge"].append(cpu / max(got, 1) * 1e6)
            lost["tidegauge"] += n - got
        latency = asyncio.run(run_latency(port, rate, seconds))
    finally:
        broker.terminate()
        broker.wait()
    paho_rate, tg_rate = statistics.median(rates["paho"]), statistics.median(rates["tidegauge"])
    paho_cpu, tg_cpu = statistics.median(cpus["paho"]), statistics.median(cpus["tidegauge"])
    print(json.dumps({"messages": n, "qos": qos, "rounds": rounds, "paho_msgs_per_s": round(paho_rate),
                      "tidegauge_readings_per_s": round(tg_rate), "ratio": round(tg_rate / paho_rate, 3),
                      "lost": lost, "all_rates": {k: [round(r) for r in v] for k, v in rates.items()},
                      "cpu_us_per_msg": {"paho": round(paho_cpu, 1), "tidegauge": round(tg_cpu, 1)},
                      "cpu_ratio": round(tg_cpu / paho_cpu, 3), "load": Path("/proc/loadavg").read_text().split()[:3],
                      **latency}))


if __name__ == "__main__":
    main()
