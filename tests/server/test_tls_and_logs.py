"""HTTPS with a certificate made here, the structured access log (no token in it), OpenAPI covering every route."""

from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import json
import logging
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.net import free_port, wait_port
from tests.server.helpers import TOKENS, auth, harness, server_config
from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow import CheckpointConfig, Flow, Runner
from tidegauge.server import TlsConfig, serve
from tidegauge.testing import MemorySink

GOOD = b'{"sensor_id":"S1","timestamp":"2026-01-01T00:00:00Z","temperature":21.5}\n'


def make_cert(tmp: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tidegauge-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                    x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                       critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp / "server.pem", tmp / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_ingest_over_https_with_a_certificate_made_here(tmp_path: Path) -> None:
    cert, key = make_cert(tmp_path)
    source = HttpIngestSource(tmp_path / "intake")
    flow = Flow("tls")
    out = MemorySink()
    flow.source(source).sink(out, name="out")
    runner = Runner(flow, checkpoint=CheckpointConfig(tmp_path / "cp", interval="100ms"), max_delay="2ms",
                    tick="20ms")
    port = free_port()
    config = server_config(port=port, tls=TlsConfig(cert=str(cert), key=str(key)))

    async def main() -> tuple[dict[str, object], str]:
        started = asyncio.Event()
        task = asyncio.create_task(serve(runner, config, environ={"TG_TEST_ADMIN": TOKENS["admin"]},
                                         started=started, handle_signals=False))
        await asyncio.wait_for(started.wait(), 30)
        try:
            trusted = ssl.create_default_context(cafile=str(cert))
            async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=trusted) as client:
                r = await client.post("/api/v1/ingest", content=GOOD * 3,
                                      headers={**auth("ingest"), "content-type": "application/x-ndjson"})
                answer = r.json()
            # a client that does not trust the certificate is refused by TLS itself
            async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}") as untrusting:
                with pytest.raises(httpx.ConnectError):
                    await untrusting.get("/healthz")
            # and plain HTTP on the TLS port gets no answer from the API
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as plain:
                try:
                    status = str((await plain.get("/healthz")).status_code)
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
            log = source.open_log()
            for _ in range(1000):
                if getattr(runner.positions().get("http"), "offset", 0) >= log.end:
                    break
                await asyncio.sleep(0.01)
            return answer, status
        finally:
            runner.stop()
            await task

    answer, plain_status = asyncio.run(main())
    assert answer == {"accepted": 3, "rejected": []}
    assert plain_status != "200"
    assert out.to_frame().height == 3


def test_access_log_is_json_lines_without_tokens(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    secret = "this-token-is-wrong-and-secret"

    async def main() -> None:
        async with harness(tmp_path, access_log=True) as h:
            await h.client.post("/api/v1/ingest", content=GOOD, headers={**auth("ingest"),
                                                                         "content-type": "application/x-ndjson"})
            await h.client.post("/api/v1/ingest", content=GOOD, headers={"authorization": f"Bearer {secret}"})
            await h.client.get(f"/api/v1/windows?limit=5&access_token={secret}", headers=auth("read"))
            await h.client.get("/metrics", headers=auth("read"))
            await h.client.get("/healthz")

    asyncio.run(main())
    lines = [r.getMessage() for r in caplog.records if r.name == "tidegauge.server.access"]
    entries = [json.loads(line) for line in lines]
    assert [(e["method"], e["path"], e["status"]) for e in entries] == [
        ("POST", "/api/v1/ingest", 200), ("POST", "/api/v1/ingest", 401), ("GET", "/api/v1/windows", 200),
        ("GET", "/metrics", 200), ("GET", "/healthz", 200)]
    assert all(isinstance(e["seconds"], float) and e["seconds"] >= 0 for e in entries)
    # every line tidegauge logged (httpx, the test's client, logs the URLs it requests: not ours)
    everything = "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("tidegauge"))
    assert everything
    for token in (secret, *TOKENS.values()):
        assert token not in everything


def test_access_log_is_off_unless_asked(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    async def main() -> None:
        async with harness(tmp_path) as h:
            await h.client.get("/healthz")

    asyncio.run(main())
    assert not [r for r in caplog.records if r.name == "tidegauge.server.access"]


def test_openapi_describes_every_route(tmp_path: Path) -> None:
    async def main() -> tuple[set[str], set[str]]:
        async with harness(tmp_path) as h:
            spec = (await h.client.get("/openapi.json", headers=auth("read"))).json()
            routes = {getattr(r, "path", "") for r in h.app.routes} - {"/openapi.json"}
            return routes, set(spec["paths"])

    routes, documented = asyncio.run(main())
    assert routes <= documented, f"routes missing from the OpenAPI document: {sorted(routes - documented)}"


def test_serve_with_json_logs_writes_one_json_object_per_line(tmp_path: Path) -> None:
    """``tidegauge serve --log-format json`` with ``access_log: true``: stderr is JSON lines, tokens absent."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from tidegauge.server import hash_token

    port = free_port()
    (tmp_path / "pipeline.yaml").write_text(f"""
name: logs
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out/readings.parquet}}
server:
  port: {port}
  access_log: true
  tokens: [{{name: gw, hash: "{hash_token(TOKENS['ingest'])}", scopes: [ingest, read]}}]
""")
    env = {**os.environ, "TIDEGAUGE_LOG_LEVEL": "INFO"}
    proc = subprocess.Popen([sys.executable, "-m", "tidegauge", "serve", str(tmp_path / "pipeline.yaml"),
                             "--log-format", "json"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, env=env)
    try:
        wait_port(port, timeout=30, proc=proc, what="tidegauge serve")
        with httpx.Client(base_url=f"http://127.0.0.1:{port}") as c:
            for _ in range(100):  # 503 until the flow reads its source
                r = c.post("/api/v1/ingest", content=GOOD, headers={**auth("ingest"),
                                                                    "content-type": "application/x-ndjson"})
                if r.status_code == 200:
                    break
                time.sleep(0.05)
            assert r.status_code == 200
            assert c.get("/metrics", headers={"authorization": "Bearer not-the-token"}).status_code == 401
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    lines = [line for line in err.decode().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    access = [r for r in records if r["logger"] == "tidegauge.server.access"]
    assert {(r["method"], r["path"], r["status"]) for r in access} >= {("POST", "/api/v1/ingest", 200),
                                                                       ("GET", "/metrics", 401)}
    assert all({"time", "level", "message"} <= set(r) for r in records)
    text = err.decode()
    assert TOKENS["ingest"] not in text and "not-the-token" not in text
