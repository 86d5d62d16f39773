"""Edge deployment: the agent on a gateway and the coordinator in the upstream server.

The contract between the two halves is :mod:`tidegauge.edge.heartbeat`: an agent posts a
:class:`Heartbeat` to its upstream every few seconds and gets back its :class:`Assignment` (the sensors
it is to process, with the generation that names that assignment).
"""

from __future__ import annotations

from tidegauge.edge.heartbeat import Assignment, Heartbeat, Resources, probe_resources

__all__ = ["Assignment", "Heartbeat", "Resources", "probe_resources"]
