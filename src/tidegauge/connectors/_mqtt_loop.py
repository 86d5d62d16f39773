"""paho-mqtt driven by the flow's asyncio event loop instead of paho's own network thread.

paho supports external event loops: the socket is watched with ``loop.add_reader``/``add_writer`` and
``loop_read``/``loop_write``/``loop_misc`` are called from the loop (paho's ``examples/loop_asyncio.py``).
Doing so removes a thread hop per batch and, above all, the contention for the GIL between paho's thread
and the flow: two busy Python threads hand the GIL over every ``sys.getswitchinterval()`` (5 ms), which
showed up as tens of milliseconds in the publish-to-output latency tail at 10,000 messages/s.

Two more things this module does that paho's own loop does not:

- the socket paho reads from is wrapped in :class:`_BufferedSocket`: paho reads a packet with three or more
  ``recv`` calls (command byte, length bytes, body); the wrapper serves them from one 32 KiB ``recv``, and
  its ``pending()`` tells the reader callback whether whole packets are still buffered;
- reconnecting with exponential backoff (paho's ``loop_forever`` does it; an external loop must), the
  blocking TCP connect and TLS handshake run in a worker thread so the flow goes on meanwhile.

Backpressure: :meth:`AsyncioPaho.pause` stops watching the socket, so nothing is read and the broker queues;
:meth:`AsyncioPaho.resume` watches it again.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho

__all__ = ["AsyncioPaho", "BufferedClient"]

logger = logging.getLogger(__name__)

_READ_CHUNK = 32 * 1024
"""Bytes asked of the kernel per ``recv``: about 200 readings of 150 bytes, so one read serves many packets
while a reader callback stays short (a few ms of paho's work at most) and the flow is not held up."""
_MISC_INTERVAL_S = 1.0
"""How often ``loop_misc`` runs (keepalive pings, ping timeouts); paho's own loop does it about every second."""
_PACKETS_PER_CALLBACK = 2_000
"""Most packets handled per reader callback before yielding to the event loop (buffered ones resume at once)."""


class _BufferedSocket:
    """A socket (plain or TLS) whose ``recv`` is served from one large read; everything else is delegated."""

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0

    def recv(self, n: int) -> bytes:
        if self._pos >= len(self._buf):
            # raises BlockingIOError / ssl.SSLWantReadError as the socket would: paho handles both
            data = self._sock.recv(max(n, _READ_CHUNK))
            if len(data) <= n:
                return bytes(data)
            self._buf, self._pos = data, 0
        start = self._pos
        self._pos = min(start + n, len(self._buf))
        return self._buf[start:self._pos]

    def pending(self) -> int:
        """Bytes buffered here (and, for TLS, decrypted bytes held by the SSL object)."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:  # send, close, fileno, setblocking, getpeercert, ...
        return getattr(self._sock, name)


class BufferedClient(paho.Client):
    """A paho client whose socket reads are buffered (see :class:`_BufferedSocket`)."""

    def _create_socket(self) -> Any:
        return _BufferedSocket(super()._create_socket())


class AsyncioPaho:
    """Runs a paho client's network I/O on the current asyncio event loop, reconnecting with backoff.

    Parameters
    ----------
    client:
        A configured client whose ``connect_async(...)`` has been called (host, port, keepalive are set).
    reconnect_min, reconnect_max:
        First and longest wait between failed connection attempts, doubling in between.
    name:
        For log messages.
    """

    def __init__(self, client: paho.Client, *, reconnect_min: float, reconnect_max: float, name: str) -> None:
        self.client = client
        self._min, self._max = max(0.01, reconnect_min), max(0.01, reconnect_max, reconnect_min)
        self._delay = self._min
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread_id = 0
        self._fd: int | None = None
        self._reading = False
        self._paused = False
        self._closing = False
        self._connect_task: asyncio.Task[None] | None = None
        self._misc_task: asyncio.Task[None] | None = None
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_register_write
        client.on_socket_unregister_write = self._on_unregister_write

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Begin connecting (in the background) on the running event loop."""
        if self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._thread_id = threading.get_ident()
        self._connect_task = self._loop.create_task(self._connect_forever())
        self._misc_task = self._loop.create_task(self._misc())

    @property
    def closing(self) -> bool:
        """Whether :meth:`close` was called (a disconnect is then expected, not a failure)."""
        return self._closing

    async def close(self) -> None:
        """Send DISCONNECT (when connected), stop watching the socket and close it."""
        self._closing = True
        for task in (self._connect_task, self._misc_task):
            if task is not None:
                task.cancel()
        for task in (self._connect_task, self._misc_task):
            if task is not None and task.get_loop() is asyncio.get_running_loop():
                try:
                    await task
                except (asyncio.CancelledError, Exception):  # closing: its failure was logged
                    pass
        c = self.client
        if c.socket() is not None:
            c.disconnect()
            c.loop_write()  # sends DISCONNECT now; paho closes the socket once it is out
        if c.socket() is not None:  # could not be written (peer gone): close it without the courtesy
            c._sock_close()  # paho has no public way to drop a socket it cannot write to

    def connack_ok(self) -> None:
        """The broker accepted the connection: the next loss retries after ``reconnect_min`` again."""
        self._delay = self._min

    # -- backpressure ----------------------------------------------------------------------------
    def pause(self) -> None:
        """Stop reading the socket (the broker queues)."""
        self._paused = True
        self._unwatch_read()

    def resume(self) -> None:
        """Read the socket again, and handle what is already buffered."""
        if not self._paused:
            return
        self._paused = False
        self._watch_read()
        sock = self.client.socket()
        if sock is not None and self._loop is not None and _pending(sock):
            self._loop.call_soon(self._on_readable)

    # -- the socket ------------------------------------------------------------------------------
    def _watch_read(self) -> None:
        sock = self.client.socket()
        if self._loop is None or sock is None or self._reading or self._paused:
            return
        self._fd = sock.fileno()
        self._loop.add_reader(self._fd, self._on_readable)
        self._reading = True

    def _unwatch_read(self) -> None:
        if self._reading and self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
        self._reading = False

    def _on_readable(self) -> None:
        c = self.client
        for _ in range(_PACKETS_PER_CALLBACK):
            if self._paused:
                return
            rc = c.loop_read()
            sock = c.socket()
            if rc != paho.MQTT_ERR_SUCCESS or sock is None:
                self._lost(rc)
                return
            if not _pending(sock):
                return
        assert self._loop is not None
        self._loop.call_soon(self._on_readable)  # more is buffered: go on after others had their turn

    def _on_socket_close(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        self._unwatch_read()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_writer(self._fd)
        self._fd = None

    def _on_register_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._thread_id:
            loop.add_writer(sock.fileno(), self._on_writable)
        else:  # the CONNECT packet, queued by reconnect() in the worker thread
            loop.call_soon_threadsafe(self._register_write_later)

    def _register_write_later(self) -> None:
        sock = self.client.socket()
        if sock is not None and self._loop is not None and self.client.want_write():
            self._loop.add_writer(sock.fileno(), self._on_writable)

    def _on_unregister_write(self, _c: paho.Client, _u: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock.fileno())

    def _on_writable(self) -> None:
        rc = self.client.loop_write()
        if rc != paho.MQTT_ERR_SUCCESS or self.client.socket() is None:
            self._lost(rc)

    def _lost(self, rc: Any) -> None:
        if self._closing or self._loop is None:
            return
        if self._connect_task is None or self._connect_task.done():
            logger.debug("mqtt %s: connection lost (%s)", self._name, rc)
            self._connect_task = self._loop.create_task(self._connect_forever(backoff=True))

    # -- connecting ------------------------------------------------------------------------------
    async def _connect_forever(self, *, backoff: bool = False) -> None:
        while not self._closing:
            if backoff:
                # a refused connection (bad credentials, say) also comes back here, so the delay is only
                # reset by an accepted CONNACK (connack_ok), not by a TCP connection
                await asyncio.sleep(self._delay)
                self._delay = min(self._delay * 2, self._max)
            backoff = True
            try:
                # blocking: TCP connect and TLS handshake (up to paho's connect timeout) off the loop
                rc = await asyncio.to_thread(self.client.reconnect)
            except Exception as exc:  # any failure to connect is retried with backoff
                logger.warning("mqtt %s: cannot connect (%s: %s); retrying in %.1f s",
                               self._name, type(exc).__name__, exc, self._delay)
                rc = None
            if self._closing:
                return
            if rc == paho.MQTT_ERR_SUCCESS and self.client.socket() is not None:
                self._watch_read()
                self._register_write_later()
                return

    async def _misc(self) -> None:
        while not self._closing:
            await asyncio.sleep(_MISC_INTERVAL_S)
            if self.client.socket() is None:
                continue
            rc = self.client.loop_misc()
            if rc != paho.MQTT_ERR_SUCCESS or self.client.socket() is None:
                self._lost(rc)


def _pending(sock: Any) -> int:
    pending: Callable[[], int] | None = getattr(sock, "pending", None)
    return 0 if pending is None else pending()
