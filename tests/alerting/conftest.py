"""A real webhook receiver (an HTTP server on a loopback port), and the alert store backends the restart
scenarios run against: SQLite always, PostgreSQL when reachable
(skipped otherwise, failed under ``TIDEGAUGE_REQUIRE_SERVERS=1``)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.connectors.servers import POSTGRES_CONNINFO, require, unique


@pytest.fixture(params=["sqlite", "postgresql"])
def store_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """Where an alert store lives: a SQLite file, or a fresh schema of the test PostgreSQL database."""
    if request.param == "sqlite":
        yield str(tmp_path / "a.db")
        return
    require("postgres")
    import psycopg
    schema = unique("tg_alerts")
    with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        # the schema on the search path: the store's tables land there, apart from any other test's
        yield f"{POSTGRES_CONNINFO}?options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(POSTGRES_CONNINFO, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture
def http_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    """``(url, payloads)``: every JSON body POSTed to the URL is appended to ``payloads``."""
    got: list[dict[str, Any]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            got.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", got
    server.shutdown()
    server.server_close()
