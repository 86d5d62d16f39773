"""Hypothesis throws bad input at every endpoint: no 5xx, every reject explained and dead-lettered."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from tests.server.helpers import TOKENS, harness

# all within max_future (1h) of each other: a record far ahead of the rest is (rightly) dead-lettered by the
# flow as "future", which this test does not count as a validation reject
_TS = ["2026-01-01T00:00:00Z", "2026-01-01T00:30:01.5+00:30", "2026-01-01t00:00:02z", 1767225603, 1767225604.25]
_valid = st.builds(
    lambda s, ts, t: {"sensor_id": s, "timestamp": ts, "temperature": t},
    st.text(min_size=1, max_size=20), st.sampled_from(_TS),
    st.one_of(st.none(), st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**6), 10**6)),
)
_weird_value = st.one_of(
    st.just("NaN"), st.just("Infinity"), st.just("1e999"), st.just("-1e400"), st.just("123456789" * 40),
    st.just('"\\ud800"'), st.just("true"), st.just("[]"), st.just("{}"), st.just('"2026-13-45T99:00:00Z"'),
    st.integers().map(str), st.text(max_size=10).map(lambda s: '"' + s.replace("\\", "").replace('"', "") + '"'),
)
_bad_line = st.one_of(
    st.binary(max_size=40),
    st.text(max_size=40).map(lambda s: s.encode("utf-8", "surrogatepass")),
    st.tuples(st.sampled_from(["sensor_id", "timestamp", "temperature", "humidity", "x"]), _weird_value)
    # a repeated "timestamp" key with a plain integer is a valid record (the last value wins) stamped in
    # 1970: the flow may rightly dead-letter a later record as "future" by its vote, not a validation reject
    .filter(lambda kv: not (kv[0] == "timestamp" and kv[1].lstrip("-").isdigit() and len(kv[1]) < 20)).map(
        lambda kv: ('{"sensor_id":"S","timestamp":"2026-01-01T00:00:00Z","' + kv[0] + '":' + kv[1] + "}").encode()),
    st.just(b'{"timestamp":"2026-01-01T00:00:00Z"}'),
    st.just(b'{"sensor_id":"","timestamp":"2026-01-01T00:00:00Z"}'),
    st.just(b'{"sensor_id":"S","timestamp":"2026-01-01T00:00:00"}'),
)
_line = st.one_of(_valid.map(lambda d: __import__("msgspec").json.encode(d)), _bad_line)
_token = st.sampled_from([TOKENS["ingest"], TOKENS["read"], TOKENS["device"], "", "wrong", "\u00e9\u0000x", None])
_query = st.sampled_from(["/api/v1/sensors", "/api/v1/sensors/S/series", "/api/v1/windows", "/api/v1/anomalies",
                          "/api/v1/dead-letters", "/metrics", "/readyz", "/healthz", "/openapi.json", "/nope"])
_params = st.dictionaries(st.sampled_from(["start", "end", "limit", "window", "agg", "field", "sensor_id"]),
                          st.text(max_size=12), max_size=3)
_request = st.one_of(
    st.tuples(st.just("ingest"), _token, st.lists(_line, max_size=12),
              st.sampled_from(["application/x-ndjson", None])),
    st.tuples(st.just("array"), _token, st.binary(max_size=60), st.just("application/json")),
    st.tuples(st.just("get"), _token, _query, _params),
)


def _headers(token: str | None) -> dict[str, Any]:
    # bytes: a non-ASCII token must reach the server as raw bytes, not fail in the client
    return {} if token is None else {"authorization": f"Bearer {token}".encode()}


@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
          phases=[Phase.explicit, Phase.generate])
@given(requests=st.lists(_request, min_size=1, max_size=25))
def test_bad_input_never_5xx_and_rejects_equal_dead_letters(requests: list[Any]) -> None:
    async def main(tmp: Path) -> None:
        async with harness(tmp, max_body_bytes=600) as h:
            accepted = rejects = 0
            for kind, token, a, b in requests:
                hdrs = _headers(token)
                if kind == "get":
                    r = await h.client.get(a, params=b, headers=hdrs)
                    assert r.status_code < 500 or (a == "/readyz" and r.status_code == 503), (a, b, r.text)
                    continue
                body = b"\n".join(a) if kind == "ingest" else a
                if b is not None:
                    hdrs["content-type"] = b.encode()
                r = await h.client.post("/api/v1/ingest", content=body, headers=hdrs)
                assert r.status_code < 500, r.text
                if r.status_code in (200, 400) and "accepted" in r.json():
                    answer = r.json()
                    assert all(x["reason"] for x in answer["rejected"])
                    # a body without a content type that starts with "[" is read as one JSON array
                    sniffed_json = b is None and body[:256].lstrip()[:1] == b"["
                    if kind == "ingest" and not sniffed_json:
                        lines = [x for x in body.split(b"\n") if x.strip()]
                        assert answer["accepted"] + len(answer["rejected"]) == len(lines)
                    accepted += answer["accepted"]
                    rejects += len(answer["rejected"])
                else:
                    assert r.status_code in (401, 403, 413), (r.status_code, r.text)
            await h.drained()
            dead = h.dead.to_frame()
            assert dead.height == rejects, dead
            assert h.out.to_frame().height == accepted

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(main(Path(tmp)))
