"""The alert manager: evaluates rules on batches, runs the lifecycle, groups, mutes, routes and notifies.

Driven by an injectable clock. Standalone: ``evaluate(df, now)`` after each batch, ``tick(now)`` when time
passes with no data. In a flow: :class:`~tidegauge.alerting.step.AlertStep` calls the same two methods.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import polars as pl

from tidegauge._time import Clock, Duration, SystemClock, parse_duration
from tidegauge.alerting.config import AlertingConfig
from tidegauge.alerting.dispatch import DeliveryPolicy, Dispatcher
from tidegauge.alerting.grouping import flush_group, group_key, new_group
from tidegauge.alerting.lifecycle import Alert, RemoteTransition, advance, fingerprint, new_alert, observe
from tidegauge.alerting.notifiers import Notifier, build_notifier
from tidegauge.alerting.routing import Inhibitor, Matcher, Route, Silence, compile_route
from tidegauge.alerting.rules import ACTIVE, ID, SEEN, CompiledRule, compile_rule
from tidegauge.alerting.store import AlertStore, GroupState, open_store
from tidegauge.dataflow.metrics import LatencyHistogram

__all__ = ["TRANSITION_SCHEMA", "AlertManager"]

logger = logging.getLogger(__name__)

TRANSITION_SCHEMA: dict[str, pl.DataType] = {
    "at": pl.Datetime("us", "UTC"), "fingerprint": pl.String(), "rule": pl.String(), "severity": pl.String(),
    "state": pl.String(), "labels": pl.String(),
}
_RULE_STATE_EVERY_US = 5_000_000  # per-key rule state is persisted at most every 5 s (and at close)
EVAL_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
"""Upper bounds (seconds) of the per-rule evaluation histogram: from a screened-out rule to a 65k-row batch."""


class _Missing(dict[str, Any]):
    def __missing__(self, key: str) -> str:
        return "<no value>"


def render(template: str, fields: Mapping[str, Any]) -> str:
    """Fill ``{field}`` placeholders from the record; unknown fields read ``<no value>``."""
    try:
        return template.format_map(_Missing(fields))  # C-implemented: ~10x string.Formatter().vformat
    except (ValueError, TypeError, KeyError, IndexError) as exc:
        logger.debug("template %r: %s", template, exc)
        return template


class AlertManager:
    """Rules, lifecycle, grouping, inhibition, silences and notification, persisted in ``store``.

    Parameters
    ----------
    config:
        Validated rules file (:func:`~tidegauge.alerting.config.load_config`).
    store:
        An :class:`AlertStore`, the path of its SQLite file, or a ``postgresql://`` URL
        (default in memory: state lost at exit).
    clock:
        Processing-time clock (a :class:`~tidegauge._time.ManualClock` in tests).
    notifiers:
        Receiver name -> notifier, overriding the ones built from ``config.receivers``.
    delivery:
        ``"inline"`` delivers due notifications at the end of each evaluate/tick (deterministic);
        ``"background"`` delivers from one thread per receiver; ``"none"`` only queues them.

    The public methods hold one re-entrant lock, so the HTTP API may call them from another thread than
    the one evaluating.
    """

    def __init__(
        self,
        config: AlertingConfig,
        *,
        store: AlertStore | str | Path | None = None,
        clock: Clock | None = None,
        notifiers: Mapping[str, Notifier] | None = None,
        delivery: Literal["inline", "background", "none"] = "inline",
        key_column: str = "sensor_id",
        time_column: str = "timestamp",
    ) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self._own_store = not isinstance(store, AlertStore)
        self.store = store if isinstance(store, AlertStore) else open_store(store or ":memory:")
        self._lock = threading.RLock()
        self.rules = [compile_rule(r, key_column=key_column, time_column=time_column, flap=config.flap)
                      for r in config.rules]
        self._rules = {r.name: r for r in self.rules}
        self.route = compile_route(config.route)
        self._routes: dict[str, Route] = {r.path: r for r in self.route.walk()}
        self.inhibitor = Inhibitor(config.inhibit_rules)
        self.receivers = {r.name: r for r in config.receivers}
        built: dict[str, Notifier] = {}
        for r in config.receivers:
            built[r.name] = notifiers[r.name] if notifiers and r.name in notifiers else build_notifier(r)
        policies = {r.name: DeliveryPolicy(r.max_attempts, parse_duration(r.backoff), parse_duration(r.max_backoff))
                    for r in config.receivers}
        self.dispatcher = Dispatcher(self.store, built, policies=policies, clock=self.clock)
        self.delivery = delivery
        self._delivery_closed = False
        self.retention_us = parse_duration(config.resolved_retention)
        self.eval_seconds: dict[str, float] = {}
        self.evaluations: Counter[str] = Counter()
        self.eval_histograms: dict[str, LatencyHistogram] = {
            r.name: LatencyHistogram(EVAL_BUCKETS, [0] * (len(EVAL_BUCKETS) + 1)) for r in self.rules}
        self.alerts: dict[str, Alert] = {a.fingerprint: a for a in self.store.load_alerts()}
        self._ids: dict[str, dict[str, str]] = {r.name: {} for r in self.rules}
        for a in self.alerts.values():
            rule = self._rules.get(a.rule)
            if rule is not None and not a.remote:
                self._ids[a.rule][self._identity(rule, a.labels)] = a.fingerprint
        self.groups: dict[str, GroupState] = {g.key: g for g in self.store.load_groups()}
        self._members: dict[str, set[str]] = {}
        for name, blob in self.store.load_rule_state().items():
            if name in self._rules:
                self._rules[name].restore(blob)
        self._silences: list[Silence] = self.store.silences()
        self._dirty_alerts: set[str] = set()
        self._gone_alerts: set[str] = set()
        self._dirty_groups: set[str] = set()
        self._gone_groups: set[str] = set()
        self._outbox: list[tuple[str, str, str, dict[str, Any], int]] = []
        self._transitions: list[tuple[int, str, str, str, str, str]] = []
        self._rule_state_at = -(2**62)
        self._rule_state_dirty: set[str] = set()
        if delivery == "background":
            self.dispatcher.start()
        if self.alerts:
            logger.info("restored %d alerts and %d groups from %s", len(self.alerts), len(self.groups),
                        self.store.path)

    @staticmethod
    def _identity(rule: CompiledRule, labels: Mapping[str, str]) -> str:
        return "\x1f".join(labels.get(c, "") for c in rule.by) if rule.by else rule.name

    def _now(self, now_us: int | None) -> int:
        return self.clock.now_us() if now_us is None else now_us

    def _held(self, rule: CompiledRule) -> set[str]:
        ids = self._ids[rule.name]
        return {i for i, fp in ids.items() if self.alerts[fp].state != "resolved"}

    # evaluation --------------------------------------------------------------------------------------------
    def evaluate(self, df: pl.DataFrame, now_us: int | None = None) -> pl.DataFrame:
        """Evaluate every rule on batch ``df`` at processing time ``now_us``; return the alert transitions."""
        with self._lock:
            return self._evaluate(df, self._now(now_us))

    def _evaluate(self, df: pl.DataFrame, now: int) -> pl.DataFrame:
        applicable = [r for r in self.rules if r.applies(df)] if df.height else []
        screened = [r for r in applicable if r.hit_expr is not None]
        hits: dict[str, bool] = {}
        if screened:
            # one pass over the batch tells which condition rules matched anything at all
            row = df.select([r.hit_expr.any().alias(r.name) for r in screened if r.hit_expr is not None]).row(0)
            hits = {r.name: bool(v) for r, v in zip(screened, row, strict=True)}
        for rule in applicable:
            held = self._held(rule)
            if hits.get(rule.name, True) is False and not held:
                continue
            t0 = time.perf_counter()
            obs = rule.evaluate(df, now, held)
            spent = time.perf_counter() - t0
            self.eval_seconds[rule.name] = self.eval_seconds.get(rule.name, 0.0) + spent
            self.eval_histograms[rule.name].observe(spent)
            self.evaluations[rule.name] += 1
            if type(rule).snapshot is not CompiledRule.snapshot:
                self._rule_state_dirty.add(rule.name)
            if obs is not None and obs.height:
                self._apply(rule, obs, now)
        return self._step(now)

    def tick(self, now_us: int | None = None) -> pl.DataFrame:
        """Advance processing time with no data: ``for``/``keep_firing_for``, no-data rules, group flushes."""
        with self._lock:
            return self._step(self._now(now_us))

    def _apply(self, rule: CompiledRule, obs: pl.DataFrame, now: int) -> None:
        cfg = rule.cfg
        for row in obs.iter_rows(named=True):
            seen, active = bool(row[SEEN]), bool(row[ACTIVE])
            fp = self._ids[rule.name].get(row[ID])
            alert = self.alerts.get(fp) if fp else None
            values = {k: v for k, v in row.items() if not k.startswith("_")}
            entered: list[str] = []
            if alert is None:
                if not seen:
                    continue
                labels = {"alertname": rule.name, "severity": cfg.severity, **cfg.labels}
                labels.update({c: "" if row.get(c) is None else str(row[c]) for c in rule.by})
                alert = new_alert(fingerprint(labels), rule.name, labels, cfg.severity, now_us=now)
                self.alerts[alert.fingerprint] = alert
                self._ids[rule.name][row[ID]] = alert.fingerprint
                self._gone_alerts.discard(alert.fingerprint)
                entered.append("pending")
            entered += observe(alert, rule.policy, seen=seen, active=active, now_us=now, values=values)
            if seen:
                fields = {**values, **alert.labels}
                alert.annotations = {k: render(t, fields) for k, t in cfg.annotations.items()}
            self._dirty_alerts.add(alert.fingerprint)
            self._record(alert, entered, now)

    def _record(self, alert: Alert, entered: Sequence[str], now: int) -> None:
        for state in entered:
            self._transitions.append((now, alert.fingerprint, alert.rule, alert.severity, state,
                                      json.dumps(alert.labels, sort_keys=True)))
            if state == "inactive":
                self._forget(alert)
            elif state in ("firing", "resolved"):
                self._route_alert(alert, now)

    def _forget(self, alert: Alert) -> None:
        self.alerts.pop(alert.fingerprint, None)
        ids = self._ids.get(alert.rule, {})
        for k in [k for k, v in ids.items() if v == alert.fingerprint]:
            del ids[k]
        self._dirty_alerts.discard(alert.fingerprint)
        self._gone_alerts.add(alert.fingerprint)

    def _route_alert(self, alert: Alert, now: int) -> None:
        for route in self.route.match(alert.labels):
            labels = route.group_labels(alert.labels)
            key = group_key(route, labels)
            g = self.groups.get(key)
            if g is None:
                g = self.groups[key] = new_group(route, labels, now)
                self._gone_groups.discard(key)
            members = self._members.get(key)
            if members is None:  # a set beside the persisted list: a burst of 10,000 alerts is not O(n^2)
                members = self._members[key] = set(g.alerts)
            if alert.fingerprint not in members:
                g.alerts.append(alert.fingerprint)
                members.add(alert.fingerprint)
            self._dirty_groups.add(key)

    def _step(self, now: int) -> pl.DataFrame:
        for rule in self.rules:
            obs = rule.tick(now, self._held(rule))
            if obs is not None and obs.height:
                self._apply(rule, obs, now)
        for alert in list(self.alerts.values()):
            if alert.state == "resolved":
                # a remote alert's resolved_at is its time there, maybe long ago: keep it from when it came
                since = alert.updated_at if alert.remote else alert.resolved_at
                if since is not None and now - since >= self.retention_us:
                    self._forget(alert)
                continue
            owner = self._rules.get(alert.rule)
            if owner is None or alert.remote:
                continue
            entered = advance(alert, owner.policy, now_us=now)
            if entered:
                self._dirty_alerts.add(alert.fingerprint)
                self._record(alert, entered, now)
        self._silences = self.store.silences()
        self._flush(now)
        self._commit(now)
        out = pl.DataFrame(self._transitions, schema={**TRANSITION_SCHEMA, "at": pl.Int64()}, orient="row")
        out = out.with_columns(pl.col("at").cast(pl.Int64).cast(pl.Datetime("us", "UTC")))
        self._transitions = []
        if self.delivery == "inline":
            self.dispatcher.deliver_due(now)
        elif self.delivery == "background":
            self.dispatcher.wake()
        return out

    # alerts raised elsewhere -----------------------------------------------------------------------------
    def receive(self, transitions: Sequence[RemoteTransition], *, labels: Mapping[str, str],
                now_us: int | None = None) -> int:
        """Take alert transitions raised elsewhere (an edge agent's rules) into this manager's state.

        Each alert is identified by its labels plus ``labels`` (e.g. ``{"edge_node": "gw-1"}``), keeps the
        times it had there (``fired_at``/``resolved_at``) and shows in :meth:`list_alerts` like any other.
        ``firing`` and ``resolved`` transitions with ``notify`` go through the routes, grouping, inhibition,
        silences and receivers of this manager; the others are recorded only (``pending`` ones are
        ignored). Returns how many transitions were routed for notification.
        """
        with self._lock:
            now = self._now(now_us)
            routed = 0
            for t in transitions:
                if t.state not in ("firing", "resolved"):
                    continue
                merged = {**t.labels, **labels}
                fp = fingerprint(merged)
                alert = self.alerts.get(fp)
                if t.state == "firing":
                    if alert is not None and alert.state == "firing":
                        continue  # already firing here: nothing new to say
                    alert = new_alert(fp, t.rule, merged, t.severity, now_us=t.at_us)
                    alert.state, alert.fired_at, alert.active, alert.remote = "firing", t.at_us, True, True
                    self.alerts[fp] = alert
                    self._gone_alerts.discard(fp)
                else:
                    if alert is not None and alert.state == "resolved":
                        continue
                    if alert is None:  # its firing came before this store existed, or was not kept
                        alert = new_alert(fp, t.rule, merged, t.severity, now_us=t.at_us)
                        alert.remote = True
                        self.alerts[fp] = alert
                    alert.state, alert.resolved_at, alert.active = "resolved", t.at_us, False
                alert.updated_at = now
                self._dirty_alerts.add(fp)
                if t.notify:
                    self._route_alert(alert, now)
                    routed += 1
            self._flush(now)
            self._commit(now)
            if self.delivery == "inline":
                self.dispatcher.deliver_due(now)
            elif self.delivery == "background":
                self.dispatcher.wake()
            return routed

    def muted(self, now_us: int | None = None) -> dict[str, str]:
        """Firing alerts that are not notified: fingerprint -> ``silence:<id>`` or ``inhibited:<fingerprint>``."""
        now = self._now(now_us)
        with self._lock:
            firing = {fp: a.labels for fp, a in self.alerts.items() if a.state == "firing"}
        out = {fp: f"inhibited:{src}" for fp, src in self.inhibitor.muted(firing).items()}
        active = [s for s in self._silences if s.active(now)]
        for fp, labels in firing.items():
            for s in active:
                if s.matches(labels):
                    out[fp] = f"silence:{s.id}"
                    break
        return out

    def _flush(self, now: int) -> None:
        due = sorted((g for g in self.groups.values() if g.next_flush <= now), key=lambda g: (g.next_flush, g.key))
        if not due:
            return
        muted = self.muted(now)
        for g in due:
            route = self._routes.get(g.route)
            receiver = self.receivers.get(g.receiver)
            if route is None or receiver is None:  # the route tree changed since this group was saved
                route = self.route
            self._members.pop(g.key, None)  # the flush rewrites the group's member list
            res = flush_group(g, route, self.alerts, muted, send_resolved=receiver.send_resolved if receiver else True,
                              external_url=self.config.external_url, now_us=now)
            if res.payload is not None:
                self._outbox.append((g.key, g.receiver, res.payload["status"], res.payload, now))
            if res.remove_group:
                del self.groups[g.key]
                self._dirty_groups.discard(g.key)
                self._gone_groups.add(g.key)
            else:
                self._dirty_groups.add(g.key)

    def _commit(self, now: int) -> None:
        states: dict[str, bytes] = {}
        if self._rule_state_dirty and now - self._rule_state_at >= _RULE_STATE_EVERY_US:
            states = self._rule_states(self._rule_state_dirty)
        if not (self._dirty_alerts or self._gone_alerts or self._dirty_groups or self._gone_groups
                or self._outbox or states):
            return
        with self.store.transaction() as conn:
            self.store.save_alerts(conn, [self.alerts[f] for f in self._dirty_alerts if f in self.alerts])
            self.store.delete_alerts(conn, self._gone_alerts)
            self.store.save_groups(conn, [self.groups[k] for k in self._dirty_groups if k in self.groups])
            self.store.delete_groups(conn, self._gone_groups)
            self.store.enqueue(conn, self._outbox)
            self.store.save_rule_state(conn, states)
        if states:
            self._rule_state_at = now
            self._rule_state_dirty.clear()
        self._dirty_alerts.clear()
        self._gone_alerts.clear()
        self._dirty_groups.clear()
        self._gone_groups.clear()
        self._outbox = []

    def _rule_states(self, names: set[str]) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        for n in names:
            blob = self._rules[n].snapshot()
            if blob is not None:
                out[n] = blob
        return out

    # API -----------------------------------------------------------------------------------------------
    def list_alerts(
        self, *, state: str | None = None, severity: str | None = None, labels: Mapping[str, str] | None = None
    ) -> list[Alert]:
        """Current alerts, filtered by state, severity and exact label values."""
        with self._lock:
            out = [a for a in self.alerts.values()
                   if (state is None or a.state == state) and (severity is None or a.severity == severity)
                   and all(a.labels.get(k) == v for k, v in (labels or {}).items())]
        return sorted(out, key=lambda a: (a.rule, sorted(a.labels.items())))

    def acknowledge(self, fp: str, *, by: str, comment: str = "", now_us: int | None = None) -> Alert:
        """Acknowledge an alert (stops its repeat notifications until it resolves)."""
        with self._lock:
            alert = self._get(fp)
            alert.ack_by, alert.ack_at, alert.ack_comment = by, self._now(now_us), comment
            self._save_one(alert)
            return alert

    def unacknowledge(self, fp: str) -> Alert:
        """Withdraw an acknowledgement: the alert's repeat notifications resume."""
        with self._lock:
            alert = self._get(fp)
            alert.ack_by = alert.ack_at = alert.ack_comment = None
            self._save_one(alert)
            return alert

    def _get(self, fp: str) -> Alert:
        try:
            return self.alerts[fp]
        except KeyError:
            raise KeyError(f"no alert with fingerprint {fp!r}; list them with `tidegauge alerts ls`") from None

    def _save_one(self, alert: Alert) -> None:
        with self.store.transaction() as conn:
            self.store.save_alerts(conn, [alert])

    def add_silence(
        self, matchers: Sequence[str | Matcher], *, duration: Duration | None = None, ends_at: datetime | None = None,
        created_by: str, comment: str = "", now_us: int | None = None,
    ) -> Silence:
        """Silence the alerts matching every matcher until ``ends_at`` or for ``duration`` (one is required)."""
        now = self._now(now_us)
        if ends_at is not None:
            end = int(ends_at.astimezone(UTC).timestamp() * 1_000_000) if ends_at.tzinfo else None
            if end is None:
                raise ValueError("ends_at: pass a timezone-aware datetime")
        elif duration is not None:
            end = now + parse_duration(duration, name="duration")
        else:
            raise ValueError("a silence must end: give duration= (e.g. '2h') or ends_at=")
        with self._lock:
            s = self.store.add_silence(matchers, starts_at=now, ends_at=end, created_by=created_by, comment=comment,
                                       now_us=now)
            self._silences = self.store.silences()
        return s

    def silences(self) -> list[Silence]:
        return self.store.silences()

    def expire_silence(self, silence_id: str, *, now_us: int | None = None) -> bool:
        """End a silence now; ``False`` if there is no such silence or it had already ended."""
        with self._lock:
            ok = self.store.expire_silence(silence_id, now_us=self._now(now_us))
            self._silences = self.store.silences()
        return ok

    def metrics(self) -> dict[str, Any]:
        """Rule evaluation time, alerts by state, notifications sent/failed (for ``/metrics``).

        ``rule_eval_seconds`` maps each rule to ``(cumulative buckets [(le, n), ...], sum of seconds)``;
        the other entries map a rule, state or receiver name to a count.
        """
        with self._lock:
            st = self.dispatcher.stats
            by_state = Counter(a.state for a in self.alerts.values())
            return {
                "rule_eval_seconds": {n: (h.cumulative(), h.total) for n, h in self.eval_histograms.items()},
                "rule_eval_seconds_total": dict(self.eval_seconds),
                "rule_evaluations_total": dict(self.evaluations),
                "alerts": {s: by_state.get(s, 0) for s in ("pending", "firing", "resolved")},
                "receivers": sorted(self.receivers),
                "notifications_sent_total": dict(st.sent),
                "notifications_failed_total": dict(st.failed),
                "notification_attempts_failed_total": dict(st.failed_attempts),
                "notifications_dropped_total": dict(st.dropped),
            }

    def flush_now(self, now_us: int | None = None) -> int:
        """Notify now every group still inside its ``group_wait`` (never notified yet); how many there were.

        For the end of a finite run (``tidegauge run`` over a file): there is no later for the wait to end in.
        Groups already notified keep their ``group_interval`` (their next notification is a change's).
        """
        with self._lock:
            now = self._now(now_us)
            waiting = [g for g in self.groups.values() if g.next_flush > now and g.last_notify is None]
            for g in waiting:
                g.next_flush = now
            if waiting:
                self._step(now)
            return len(waiting)

    def close_delivery(self) -> None:
        """Stop the delivery workers after one last attempt at what is due (idempotent; :meth:`close` calls it)."""
        if self._delivery_closed:
            return
        self._delivery_closed = True
        self.dispatcher.stop()
        if self.delivery == "background":
            self.dispatcher.deliver_due()

    def close(self) -> None:
        """Persist per-key rule state, stop delivery workers (after one last attempt at what is due, so the
        last pages of a finite run are not left waiting in the outbox), close the store (if this manager
        opened it)."""
        with self._lock:
            states = self._rule_states({r.name for r in self.rules})
            if states:
                with self.store.transaction() as conn:
                    self.store.save_rule_state(conn, states)
        self.close_delivery()
        if self._own_store:
            self.store.close()
