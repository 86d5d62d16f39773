"""A heartbeat-only edge agent, as a real process: posts Heartbeats (real psutil figures) and obeys its Assignment.

It "processes" exactly the sensors of the last assignment it received, from the moment it received it, and
drops them all when it could not reach the coordinator for the assignment's lease. Every change of what it
processes is appended to ``--log`` as one JSON line ``{"mono_ns", "wall_us", "generation", "sensors"}``
(``mono_ns``: CLOCK_MONOTONIC, shared by every process on the machine), written *before* it starts
processing the new set (and one line at the start, before the first heartbeat), so a test can check
from these logs that no sensor ran on two agents at once.

    python -m tests.edge.fake_agent --id gw-1 --upstream http://127.0.0.1:8080 --token T --log gw-1.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import httpx
import msgspec

from tidegauge.edge.heartbeat import Assignment, Heartbeat, probe_resources


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--id", required=True)
    p.add_argument("--upstream", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--location", default=None, help="lat,lon")
    p.add_argument("--capacity", type=int, default=1000)
    p.add_argument("--extra-load", type=float, default=0.0, help="readings/s of other work to report")
    args = p.parse_args(argv)
    location = tuple(float(v) for v in args.location.split(",")) if args.location else None
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, _stop)
    generation, sensors, last_ok_wall, lease_s = 0, [], 0.0, 0.0
    url = args.upstream.rstrip("/") + "/api/v1/edge/heartbeat"
    headers = {"authorization": f"Bearer {args.token}", "content-type": "application/json"}
    with open(args.log, "a", buffering=1) as log, httpx.Client(timeout=max(2.0, args.interval * 4)) as client:

        def switch(gen: int, new: list[str]) -> None:
            nonlocal generation, sensors
            if new != sensors or gen != generation:
                log.write(json.dumps({"mono_ns": time.monotonic_ns(), "wall_us": time.time_ns() // 1000,
                                      "generation": gen, "sensors": new}) + "\n")
                os.fsync(log.fileno())
            generation, sensors = gen, new

        log.write(json.dumps({"mono_ns": time.monotonic_ns(), "wall_us": time.time_ns() // 1000, "generation": 0,
                              "sensors": []}) + "\n")  # the start: processing nothing yet
        while not stop:
            sent = time.time()
            if lease_s and sensors and sent - last_ok_wall > lease_s:
                switch(generation, [])  # lease lapsed: the coordinator may have given them away
            hb = Heartbeat(node_id=args.id, sent_at_us=int(sent * 1e6), version="fake-agent",
                           location=location, capacity=args.capacity, resources=probe_resources("."),
                           load=args.extra_load + len(sensors), sensors=sensors, generation=generation)
            try:
                r = client.post(url, content=hb.encode(), headers=headers)
                r.raise_for_status()
                a = msgspec.json.decode(r.content, type=Assignment)
                last_ok_wall, lease_s = sent, a.lease_s
                switch(a.generation, list(a.sensors))
            except (httpx.HTTPError, msgspec.ValidationError) as exc:
                print(f"{args.id}: heartbeat failed: {exc}", file=sys.stderr)
            time.sleep(max(0.0, args.interval - (time.time() - sent)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
