"""An agent forwarding to an HTTPS upstream whose certificate a private CA signed (``--cacert``).

The upstream is ``tidegauge serve --edge-db`` with TLS and a certificate made here (self-signed: its own
CA); the agents are ``tidegauge agent`` processes.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.edge.procs import TOKEN, Proc, http_ok, status, wait_for
from tests.net import free_port
from tests.server.test_tls_and_logs import make_cert
from tidegauge.server import hash_token


def _https_ok(url: str, ca: Path) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2, context=ssl.create_default_context(cafile=str(ca))) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _agent(tmp: Path, name: str, port: int, *extra: str) -> tuple[Proc, int]:
    listen = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("SSL_CERT_FILE", "SSL_CERT_DIR")}
    args = [sys.executable, "-m", "tidegauge", "agent", "--id", name, "--upstream", f"https://127.0.0.1:{port}",
            "--token", TOKEN, "--data-dir", str(tmp / name), "--listen", f"127.0.0.1:{listen}",
            "--forward", "readings", "--sensors", "5", "--rate", "200", "--no-detect",
            "--heartbeat-interval", "1s", *extra]
    p = Proc(args, tmp / f"{name}.log", env={**env, "TIDEGAUGE_LOG_LEVEL": "INFO"})
    wait_for(lambda: http_ok(f"http://127.0.0.1:{listen}/healthz"), 90, name, p)
    return p, listen


def test_agent_with_cacert_delivers_to_an_https_upstream_and_without_it_does_not(tmp_path: Path) -> None:
    cert, _ = make_cert(tmp_path)
    port = free_port()
    (tmp_path / "upstream.yaml").write_text(f"""
name: upstream
source: {{http: {{log_dir: intake, durability: os}}}}
sink: {{file: out/readings.parquet}}
server:
  port: {port}
  dashboard: false
  tls: {{cert: server.pem, key: server.key}}
  tokens: [{{name: gw, hash: "{hash_token(TOKEN)}", scopes: [ingest, read]}}]
""")
    up = Proc([sys.executable, "-m", "tidegauge", "serve", str(tmp_path / "upstream.yaml"), "--edge-db",
               str(tmp_path / "edge.db")], tmp_path / "upstream.log")
    agents: list[Proc] = []
    try:
        wait_for(lambda: _https_ok(f"https://127.0.0.1:{port}/healthz", cert), 90, "https upstream", up)
        trusting, t_listen = _agent(tmp_path, "gw-ca", port, "--cacert", str(cert))
        agents.append(trusting)
        untrusting, u_listen = _agent(tmp_path, "gw-plain", port)
        agents.append(untrusting)

        def acked(listen: int) -> int:
            return int(status(listen)["outbox"]["readings"]["acked_seq"])

        wait_for(lambda: acked(t_listen) > 0, 90, "readings acknowledged over https with --cacert", trusting)
        assert status(t_listen)["link"] == "up"
        wait_for(lambda: str(status(u_listen)["last_error"]).startswith("tls: certificate verify failed"), 60,
                 "the agent without --cacert reporting the certificate failure", untrusting)
        assert acked(u_listen) == 0, status(u_listen)
        assert status(u_listen)["link"] != "up"
        wait_for(lambda: "certificate verify failed" in untrusting.log.read_text(), 30, "the failure in the log",
                 untrusting)
    finally:
        for a in agents:
            a.stop()
        up.stop()


def test_a_missing_or_bad_cacert_is_one_error_line(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pem"
    junk.write_text("not a certificate\n")
    def base(upstream: str = "https://127.0.0.1:9") -> list[str]:
        return [sys.executable, "-m", "tidegauge", "agent", "--id", "gw", "--upstream", upstream,
                "--data-dir", str(tmp_path / "d"), "--listen", ""]

    for extra, env in (([], {"TIDEGAUGE_AGENT_CACERT": str(tmp_path / "nope.pem")}),
                       (["--cacert", str(junk)], {})):
        done = subprocess.run([*base(), *extra], capture_output=True, text=True, timeout=60,
                              env={**os.environ, **env})
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert "--cacert" in done.stderr and "cannot load a CA certificate" in done.stderr, done.stderr
    cert, _ = make_cert(tmp_path)
    plain = subprocess.run([*base("http://127.0.0.1:9"), "--cacert", str(cert)],
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode == 2 and "Traceback" not in plain.stderr, plain.stderr
    assert "cacert is for an https:// upstream" in plain.stderr, plain.stderr
