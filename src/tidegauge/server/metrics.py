"""Prometheus metrics: the flow's own counters read at scrape time, plus the server's counters.

Everything lives in one :class:`prometheus_client.CollectorRegistry` per app (never the global one, so
two apps in one process do not clash). :class:`FlowCollector` reads ``runner.metrics``
(:class:`~tidegauge.dataflow.metrics.FlowMetrics`) and the intake logs when ``/metrics`` is scraped, so the
hot path pays nothing for them.

End-to-end latency (``tidegauge_e2e_latency_seconds``) is from the moment a request's records are written
to the intake log to the moment the flow has processed them (every step run and every sink's
``write_batch`` returned), measured by :class:`LatencyTracker` in the flow's thread after each batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from tidegauge.connectors.http import HttpIngestSource
from tidegauge.dataflow.metrics import reason_class

__all__ = ["FlowCollector", "LatencyTracker", "ServerMetrics", "source_pressure"]

logger = logging.getLogger(__name__)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ServerMetrics:
    """The server's own counters and histograms, registered in ``registry``."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tidegauge_http_requests", "HTTP requests by route and status code",
                                ["route", "status"], registry=registry)
        self.request_seconds = Histogram("tidegauge_http_request_seconds", "HTTP request handling time",
                                         ["route"], buckets=_LATENCY_BUCKETS, registry=registry)
        self.ingested = Counter("tidegauge_ingest_records", "Records received by the server, by result",
                                ["result"], registry=registry)
        self.rejected = Counter("tidegauge_ingest_rejected_records", "Records rejected at ingest, by reason",
                                ["reason"], registry=registry)
        self.refused = Counter("tidegauge_ingest_refused_requests",
                               "Requests refused before reading records (overloaded, rate_limited, too_large)",
                               ["cause"], registry=registry)
        self.e2e = Histogram("tidegauge_e2e_latency_seconds",
                             "From records durable in the intake log to processed by the flow",
                             buckets=_LATENCY_BUCKETS, registry=registry)
        self.log_append = Histogram("tidegauge_intake_append_seconds",
                                    "Time to validate a request's records and append them to the intake log "
                                    "(in the log's threads; group-committed fsync)",
                                    buckets=_LATENCY_BUCKETS, registry=registry)
        # labelled children looked up once: ``labels()`` costs a lock and a dict lookup per call, several
        # times per request on the server's busiest thread
        self._request_children: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._accepted = self.ingested.labels("accepted")
        self._rejected = self.ingested.labels("rejected")

    def observe_request(self, route: str, status: int, seconds: float) -> None:
        """Count one HTTP request and its handling time."""
        children = self._request_children.get((route, status))
        if children is None:
            children = (self.requests.labels(route, str(status)), self.request_seconds.labels(route))
            self._request_children[(route, status)] = children
        children[0].inc()
        children[1].observe(seconds)

    def refuse(self, cause: str) -> None:
        """Count a request refused before its records were read (``overloaded``, ``rate_limited``, ...)."""
        self.refused.labels(cause).inc()

    def appended(self, seconds: float, accepted: int, reasons: list[str]) -> None:
        """Count one request's records appended to the intake log (``reasons``: one per reject)."""
        self.log_append.observe(seconds)
        if accepted:
            self._accepted.inc(accepted)
        if reasons:
            self._rejected.inc(len(reasons))
            for reason in reasons:
                self.rejected.labels(reason_class(reason)).inc()


class FlowCollector(Collector):
    """Exposes a runner's :class:`~tidegauge.dataflow.metrics.FlowMetrics` and its HTTP sources' state."""

    def __init__(self, runner: Any, sources: Mapping[str, HttpIngestSource], *, now: Any = time.time) -> None:
        self.runner = runner
        self.sources = sources
        self.now = now

    def collect(self) -> Iterator[Metric]:
        m = self.runner.metrics
        now_s = self.now()
        yield _labelled(CounterMetricFamily, "tidegauge_records_in", "Records into the flow per source",
                        "step", m.records_in)
        yield _labelled(CounterMetricFamily, "tidegauge_records_out", "Records out of each step and sink",
                        "step", m.records_out)
        yield _labelled(CounterMetricFamily, "tidegauge_dead_letters", "Dead-lettered records by reason",
                        "reason", m.dead_letters)
        yield _labelled(CounterMetricFamily, "tidegauge_late_records", "Records too late for their window",
                        "step", m.late)
        batch = HistogramMetricFamily("tidegauge_batch_processing_seconds",
                                      "Time to push one source batch through the graph")
        h = m.batch_seconds
        batch.add_metric([], [(_le(b), n) for b, n in h.cumulative()], h.total)
        yield batch
        lag = GaugeMetricFamily("tidegauge_watermark_lag_seconds",
                                "Processing time minus the flow's watermark (NaN before the first record)")
        lag.add_metric([], float("nan") if m.watermark_us is None else now_s - m.watermark_us / 1e6)
        yield lag
        yield _gauge("tidegauge_queue_depth_batches", "Batches waiting between the sources and the graph",
                     m.queue_depth)
        yield _gauge("tidegauge_checkpoints", "Checkpoints taken since start", m.checkpoints,
                     CounterMetricFamily)
        yield _gauge("tidegauge_checkpoint_duration_seconds", "Duration of the last checkpoint",
                     m.last_checkpoint_seconds)
        yield _gauge("tidegauge_checkpoint_size_bytes", "Size of the last checkpoint", m.last_checkpoint_bytes)
        age = float("nan") if m.last_checkpoint_at_us is None else now_s - m.last_checkpoint_at_us / 1e6
        yield _gauge("tidegauge_checkpoint_age_seconds", "Time since the last checkpoint (NaN: none yet)", age)
        up = GaugeMetricFamily("tidegauge_connector_up", "1 if the connector is connected/reading",
                               labels=["connector"])
        lag_b = GaugeMetricFamily("tidegauge_intake_lag_bytes", "Intake log bytes not yet read by the flow",
                                  labels=["source"])
        size = GaugeMetricFamily("tidegauge_intake_log_bytes", "Bytes kept in the intake log (until checkpointed)",
                                 labels=["source"])
        for sid, src in self.sources.items():
            logic = src.logic
            up.add_metric([sid], 0.0 if logic is None or logic.closed else 1.0)
            log = src.open_log()
            lag_b.add_metric([sid], src.lag_bytes())
            size.add_metric([sid], log.end - log.start)
        yield up
        yield lag_b
        yield size
        yield from source_pressure(self.runner)


def source_pressure(runner: Any) -> Iterator[Metric]:
    """Broker sources' own view of the pressure: messages waiting for the flow, and whether intake is paused.

    Any source whose running logic (``definition.logic``) has ``lag()`` is reported: the MQTT source's
    client-side buffer, the NATS source's pending messages in the stream.
    """
    lag = GaugeMetricFamily("tidegauge_source_lag_messages",
                            "Messages waiting for the flow: in the client buffer (MQTT) or in the stream (NATS)",
                            labels=["source"])
    paused = GaugeMetricFamily("tidegauge_source_paused",
                               "1 while a source holds off its broker because the flow is behind", labels=["source"])
    for nid, node in runner.flow.nodes.items():
        logic = getattr(node.definition, "logic", None) if node.kind == "source" else None
        value = logic.lag() if logic is not None and hasattr(logic, "lag") else None
        if value is not None:
            lag.add_metric([nid], float(value))
        if logic is not None and hasattr(logic, "paused"):
            paused.add_metric([nid], 1.0 if logic.paused else 0.0)
    yield lag
    yield paused


def _labelled(kind: Any, name: str, doc: str, label: str, values: Mapping[str, int]) -> Metric:
    family: Metric = kind(name, doc, labels=[label])
    for k, v in sorted(values.items()):
        family.add_metric([str(k)], v)  # type: ignore[attr-defined]
    return family


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _gauge(name: str, doc: str, value: float, kind: Any = GaugeMetricFamily) -> Metric:
    family: Metric = kind(name, doc, value=value)
    return family


class LatencyTracker:
    """Observes, for every request appended to an HTTP source's log, the time until the flow processed it.

    :meth:`attach` has the runner call :meth:`poll` after each batch it processed, in the flow's thread:
    the time is taken as the batch is done (no polling interval in it) and the server's event loop does
    nothing for it (polling it every 2 ms from there cost ~7% of that loop's time at full load).
    """

    def __init__(self, runner: Any, sources: Mapping[str, HttpIngestSource], histogram: Histogram) -> None:
        self.runner, self.sources, self.histogram = runner, sources, histogram

    def attach(self) -> None:
        """Observe from now on (the runner calls :meth:`poll` after every batch)."""
        self.runner.add_progress_listener(self.poll)

    def poll(self) -> None:
        """Observe the requests the flow has processed since the last call (thread-safe: the append
        times are a deque, the histogram locks itself)."""
        positions = self.runner.positions()
        now = time.perf_counter()
        for sid, src in self.sources.items():
            pos = positions.get(sid)
            offset = getattr(pos, "offset", None)
            if offset is None:
                continue
            for t in src.open_log().pop_times(offset):
                self.histogram.observe(max(0.0, now - t))
