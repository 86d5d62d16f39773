"""The ``edge_or_cloud`` policy: where a sensor's anomaly detection runs.

Detection runs on the edge when the sensor's agent is healthy and capable, in the cloud otherwise:

- *healthy*: online, its link ``up``, CPU and memory under their limits, battery (where reported) above its
  floor, and its outbox not backed up for longer than ``max_outbox_age`` (a backed-up outbox means its
  anomalies would reach upstream late);
- *capable*: the agent does not carry the label ``detection: cloud`` (an operator's way to say a gateway
  has no room for models).

A sensor no agent is processing (unassigned, or between two owners) is detected in the cloud, so every
sensor is always covered by exactly one side. ``mode: edge`` or ``mode: cloud`` forces one side for all.

>>> from tidegauge.edge.heartbeat import Heartbeat, Resources
>>> hb = Heartbeat(node_id="gw", sent_at_us=0, version="1", resources=Resources(cpu_pct=97.0))
>>> DetectionPolicy().decide(hb, online=True)
('cloud', 'cpu 97% > 90%')
"""

from __future__ import annotations

import logging
from typing import Literal

import msgspec

from tidegauge._time import parse_duration
from tidegauge.edge.heartbeat import Heartbeat

__all__ = ["Detection", "DetectionPolicy"]

logger = logging.getLogger(__name__)

Detection = Literal["edge", "cloud"]


class DetectionPolicy(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Limits of the ``edge_or_cloud`` decision (defaults suit a small gateway)."""

    mode: Literal["edge_or_cloud", "edge", "cloud"] = "edge_or_cloud"
    max_cpu_pct: float = 90.0
    """above this the local models would fall behind the readings"""
    max_memory_pct: float = 90.0
    min_battery_pct: float = 20.0
    """the EdgeBatteryLow alert threshold: a gateway low on power sheds its optional work first"""
    max_outbox_age: str = "5m"
    capability_label: str = "detection"
    """an agent labelled ``<capability_label>: cloud`` never runs detection"""

    def __post_init__(self) -> None:
        parse_duration(self.max_outbox_age, name="detection.max_outbox_age")

    def decide(self, hb: Heartbeat, *, online: bool) -> tuple[Detection, str]:
        """Where the detection of this agent's sensors runs, and why (empty reason: edge)."""
        if self.mode != "edge_or_cloud":
            return self.mode, f"mode {self.mode}"
        if not online:
            return "cloud", "offline"
        if hb.labels.get(self.capability_label) == "cloud":
            return "cloud", f"label {self.capability_label}=cloud"
        r = hb.resources
        if hb.link != "up":
            return "cloud", f"link {hb.link}"
        if r.cpu_pct > self.max_cpu_pct:
            return "cloud", f"cpu {r.cpu_pct:.0f}% > {self.max_cpu_pct:.0f}%"
        if r.memory_pct > self.max_memory_pct:
            return "cloud", f"memory {r.memory_pct:.0f}% > {self.max_memory_pct:.0f}%"
        if r.battery_pct is not None and r.battery_pct < self.min_battery_pct:
            return "cloud", f"battery {r.battery_pct:.0f}% < {self.min_battery_pct:.0f}%"
        max_age_s = parse_duration(self.max_outbox_age) / 1e6
        if hb.outbox_age_s > max_age_s:
            return "cloud", f"outbox {hb.outbox_age_s:.0f}s old > {max_age_s:.0f}s"
        return "edge", ""
