"""Delivery of queued notifications: retries with exponential backoff, one worker per receiver.

Notifications are written to the outbox (in the alert store) in the same transaction as the alert state
that caused them, then delivered from there: a crash between the two cannot lose a page, and a receiver
that is down is retried (``backoff``, doubling up to ``max_backoff``) and finally marked ``failed`` after
``max_attempts``, logged and counted; it never blocks another receiver or the dataflow.

Two ways to run: ``deliver_due(now)`` delivers synchronously what is due (tests, with a manual clock), and
``start()`` runs one background thread per receiver.
"""

from __future__ import annotations

import logging
import threading
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from tidegauge._time import Clock, SystemClock
from tidegauge.alerting.notifiers import Notifier
from tidegauge.alerting.store import AlertStore

__all__ = ["DeliveryPolicy", "DeliveryStats", "Dispatcher"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeliveryPolicy:
    """Retry policy of one receiver (microseconds)."""

    max_attempts: int = 8
    backoff_us: int = 1_000_000
    max_backoff_us: int = 300_000_000
    outbox_limit: int = 10_000  # bounded outbox: beyond this many undelivered, the oldest are dropped

    def delay_us(self, attempts: int) -> int:
        return int(min(self.max_backoff_us, self.backoff_us * 2 ** max(0, attempts - 1)))


@dataclass
class DeliveryStats:
    sent: Counter[str] = field(default_factory=Counter)
    failed_attempts: Counter[str] = field(default_factory=Counter)
    failed: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)


class Dispatcher:
    """Delivers the outbox of ``store`` through ``notifiers`` (receiver name -> notifier)."""

    def __init__(
        self,
        store: AlertStore,
        notifiers: Mapping[str, Notifier],
        *,
        policies: Mapping[str, DeliveryPolicy] | None = None,
        clock: Clock | None = None,
        poll_interval: float = 0.2,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.policies = dict(policies or {})
        self.clock = clock or SystemClock()
        self.poll_interval = poll_interval  # seconds between outbox checks of an idle background worker
        self.stats = DeliveryStats()
        self._stop = threading.Event()
        self._wake = {name: threading.Event() for name in self.notifiers}
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def policy(self, receiver: str) -> DeliveryPolicy:
        return self.policies.get(receiver, DeliveryPolicy())

    def deliver_due(self, now_us: int | None = None, *, receiver: str | None = None) -> int:
        """Try every due notification once (of one receiver, or all); return how many were delivered."""
        now = self.clock.now_us() if now_us is None else now_us
        delivered = 0
        for name in [receiver] if receiver else list(self.notifiers):
            delivered += self._deliver_receiver(name, now)
        return delivered

    def _deliver_receiver(self, name: str, now: int) -> int:
        notifier = self.notifiers.get(name)
        pol = self.policy(name)
        if self.store.pending_count(name) > pol.outbox_limit:
            n = self.store.drop_oldest_pending(name, pol.outbox_limit)
            with self._lock:
                self.stats.dropped[name] += n
            logger.error("receiver %s: outbox full, dropped the %d oldest notifications", name, n)
        delivered = 0
        for entry in self.store.due(name, now):
            attempts = entry.attempts + 1
            if notifier is None:
                self.store.mark(entry.id, state="failed", attempts=attempts, next_attempt=now, delivered_at=None,
                                error=f"no receiver named {name!r} is configured")
                continue
            try:
                notifier.send(entry.payload)
            except Exception as exc:  # any failure of a receiver is retried, never propagated
                with self._lock:
                    self.stats.failed_attempts[name] += 1
                if attempts >= pol.max_attempts:
                    with self._lock:
                        self.stats.failed[name] += 1
                    logger.error("receiver %s: giving up on notification %d after %d attempts: %s",
                                 name, entry.id, attempts, exc)
                    self.store.mark(entry.id, state="failed", attempts=attempts, next_attempt=now,
                                    delivered_at=None, error=str(exc))
                else:
                    delay = pol.delay_us(attempts)
                    logger.warning("receiver %s: attempt %d failed (%s); retrying in %.1fs",
                                   name, attempts, exc, delay / 1e6)
                    self.store.mark(entry.id, state="pending", attempts=attempts, next_attempt=now + delay,
                                    delivered_at=None, error=str(exc))
                # keep order per receiver: later notifications wait for the failing one
                break
            self.store.mark(entry.id, state="sent", attempts=attempts, next_attempt=now, delivered_at=now, error=None)
            with self._lock:
                self.stats.sent[name] += 1
            delivered += 1
        return delivered

    def wake(self) -> None:
        """Tell background workers new notifications are queued."""
        for ev in self._wake.values():
            ev.set()

    def start(self) -> None:
        """Deliver in background threads (one per receiver) until :meth:`stop`."""
        if self._threads:
            return
        self._stop.clear()
        for name in self.notifiers:
            t = threading.Thread(target=self._run, args=(name,), name=f"tidegauge-alerts-{name}", daemon=True)
            t.start()
            self._threads.append(t)

    def _run(self, name: str) -> None:
        ev = self._wake[name]
        while not self._stop.is_set():
            try:
                self._deliver_receiver(name, self.clock.now_us())
            except Exception:
                logger.exception("receiver %s: delivery worker error", name)
            ev.wait(self.poll_interval)
            ev.clear()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake()
        for t in self._threads:
            t.join(timeout)
        self._threads = []
