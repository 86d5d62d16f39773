"""The window step: a definition that builds the right windower for its window kind."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tidegauge._time import Duration, parse_duration
from tidegauge.aggregate.sketch import QuantileSketch
from tidegauge.aggregate.spec import AggSpec, parse_aggregations
from tidegauge.windows._count import CountWindower, CountWindowSnapshot
from tidegauge.windows._fixed import FixedWindower, FixedWindowSnapshot
from tidegauge.windows._session import SessionWindower, SessionWindowSnapshot
from tidegauge.windows.kinds import Count, Session, Sliding, Tumbling, WindowKind

__all__ = ["WindowStep", "Windower"]

logger = logging.getLogger(__name__)

Windower = FixedWindower | SessionWindower | CountWindower


class WindowStep:
    """Windowed aggregation per key (a :class:`~tidegauge.dataflow.base.StepDefinition`).

    Parameters
    ----------
    window:
        :class:`Tumbling`, :class:`Sliding`, :class:`Session` or :class:`Count`.
    aggregate:
        ``{field: [aggregation, ...]}``; see :func:`tidegauge.aggregate.parse_aggregations`.
    emit:
        ``"close"`` (default): a window is emitted once the watermark reaches its end; a record arriving
        within ``allowed_lateness`` after that updates the window, which is emitted again (an *update row*
        with the same key and window and the new values: keep the last row per window).
        ``"update"``: after every batch, the current values of every window the batch touched.
    allowed_lateness:
        How long after its end (in event time) a window still accepts records. Its state is freed when
        the watermark passes ``window_end + allowed_lateness``; records for freed windows go to the
        ``"late"`` side output with all their columns.
    quantiles:
        ``"exact"`` (default; buffers the window's values) or ``"sketch"`` (bucket counts with relative
        error ``sketch_alpha``; see :class:`~tidegauge.aggregate.QuantileSketch`).
    sketch_alpha:
        Relative error of sketch quantiles (default 1%).
    name:
        Step name in the flow.

    Output: the key column, ``window_start``, ``window_end`` (``Datetime("us", "UTC")``; exclusive for
    time windows, inclusive for :class:`Count`), one column per aggregation, and the internal columns,
    sorted by (``window_end``, ``window_start``, key id) within each emission.

    Examples
    --------
    >>> step = WindowStep(Tumbling("10s"), {"temperature": ["mean", "max", "p99"]})
    >>> [s.name for s in step.specs]
    ['temperature_mean', 'temperature_max', 'temperature_p99']
    """

    def __init__(
        self,
        window: WindowKind,
        aggregate: Mapping[str, Sequence[str | AggSpec | Any]],
        *,
        emit: Literal["close", "update"] = "close",
        allowed_lateness: Duration = 0,
        quantiles: Literal["exact", "sketch"] = "exact",
        sketch_alpha: float = 0.01,
        name: str | None = None,
    ) -> None:
        if not isinstance(window, Tumbling | Sliding | Session | Count):
            raise TypeError(
                f"window: expected Tumbling, Sliding, Session or Count, got {window!r}; e.g. Tumbling('10s')"
            )
        if emit not in ("close", "update"):
            raise ValueError(f"emit={emit!r}: use 'close' (once per window) or 'update' (after every batch)")
        if quantiles not in ("exact", "sketch"):
            raise ValueError(f"quantiles={quantiles!r}: use 'exact' or 'sketch'")
        QuantileSketch(sketch_alpha)  # validates alpha with a helpful message
        self.window = window
        self.specs = parse_aggregations(aggregate)
        self.emit = emit
        self.allowed_lateness_us = parse_duration(allowed_lateness, name="allowed_lateness")
        self.quantiles = quantiles
        self.sketch_alpha = float(sketch_alpha)
        self.name = name
        self.snapshot_type: type = {
            Tumbling: FixedWindowSnapshot,
            Sliding: FixedWindowSnapshot,
            Session: SessionWindowSnapshot,
            Count: CountWindowSnapshot,
        }[type(window)]

    def __repr__(self) -> str:
        return f"WindowStep({self.window!r}, {[s.name for s in self.specs]}, emit={self.emit!r})"

    def _spec_text(self) -> str:
        aggs = ";".join(s.describe() for s in self.specs)
        return (
            f"{self.window!r}|{aggs}|emit={self.emit}|lateness={self.allowed_lateness_us}"
            f"|quantiles={self.quantiles}:{self.sketch_alpha}"
        )

    def warm_up_kernels(self) -> None:
        """Load (or compile) the numba kernels of this window's fast path (fixed windows) now rather than
        at the first batch (``Runner(warm_up="kernels")``)."""
        if isinstance(self.window, Tumbling | Sliding):
            from tidegauge.windows._fixed_state import warm_up

            warm_up()

    def build(self, resume_state: Any | None) -> Windower:
        """Fresh logic, or logic continuing from a snapshot of the same definition."""
        w = self.window
        if resume_state is not None and not isinstance(resume_state, self.snapshot_type):
            raise TypeError(
                f"resume_state is a {type(resume_state).__name__}; this step restores {self.snapshot_type.__name__}"
            )
        if isinstance(w, Tumbling | Sliding):
            pane, panes, off = (w.size_us, 1, w.offset_us) if isinstance(w, Tumbling) else (w.slide_us, w.panes, 0)
            return FixedWindower(
                pane_us=pane,
                panes=panes,
                offset_us=off,
                lateness_us=self.allowed_lateness_us,
                specs=self.specs,
                emit=self.emit,
                quantiles=self.quantiles,
                alpha=self.sketch_alpha,
                spec_text=self._spec_text(),
                resume=resume_state if isinstance(resume_state, FixedWindowSnapshot) else None,
            )
        if isinstance(w, Session):
            return SessionWindower(
                gap_us=w.gap_us,
                lateness_us=self.allowed_lateness_us,
                specs=self.specs,
                emit=self.emit,
                quantiles=self.quantiles,
                alpha=self.sketch_alpha,
                spec_text=self._spec_text(),
                resume=resume_state if isinstance(resume_state, SessionWindowSnapshot) else None,
            )
        return CountWindower(
            n=w.n,
            specs=self.specs,
            emit=self.emit,
            quantiles=self.quantiles,
            alpha=self.sketch_alpha,
            spec_text=self._spec_text(),
            resume=resume_state if isinstance(resume_state, CountWindowSnapshot) else None,
        )
