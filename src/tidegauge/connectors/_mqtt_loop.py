"""paho-mqtt driven by the flow's asyncio event loop instead of paho's own network thread.

paho supports external event loops: the socket is watched with ``loop.add_reader``/``add_writer`` and
``loop_read``/``loop_write``/``loop_misc`` are called from the loop (paho's ``examples/loop_asyncio.py``).
Doing so removes a thread hop per batch and the contention for the GIL between paho's thread and the
flow: two busy Python threads hand the GIL over every ``sys.getswitchinterval()`` (5 ms). With this change
alone the latency benchmark's p50 at 10,000 messages/s went from 12-23 ms to 9-10 ms (two runs each, load
average 2-4; the tail was then dominated by other causes, see benchmarks/README.md).

Two more things this module does that paho's own loop does not:

- the socket is read in 32 KiB chunks and cut into whole packets (:class:`_FramedSocket`): paho reads a
  packet with three or more ``recv`` calls (command byte, length bytes, body), served from the chunk; and
  QoS 0 PUBLISH packets, the bulk of telemetry, are taken past paho altogether (``fast``): paho's
  per-message work (an MQTTMessage, a MQTTMessageInfo, the topic matcher, callback locks) was about
  60% of the source's CPU time at 10,000 messages/s;
- reconnecting with exponential backoff (paho's ``loop_forever`` does it; an external loop must), the
  blocking TCP connect and TLS handshake run in a worker thread so the flow goes on meanwhile.

Backpressure: :meth:`AsyncioPaho.pause` stops watching the socket, so nothing is read and the broker queues;
:meth:`AsyncioPaho.resume` watches it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import ssl
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
_READS_PER_CALLBACK = 8
"""Most chunks read per reader callback (~256 KiB, ~1,600 readings) before yielding to the event loop, so a
backlog at the broker is taken in turns with the flow instead of all before it; the next turn comes at once."""
_PACKETS_PER_CALLBACK = 512
"""Most packets paho reads per reader callback, for the same reason."""


FastPublish = Callable[[str, bytes], bool]
"""Receives a QoS 0 PUBLISH (topic, payload) read past paho; returns whether to go on reading."""


class _FramedSocket:
    """A socket (plain or TLS) read in large chunks and cut into whole MQTT packets.

    paho only ever sees whole packets (``recv`` serves the head packet's bytes, or raises
    ``BlockingIOError`` while it is incomplete), so it never stops mid-packet and the framing here stays
    aligned with paho's. QoS 0 PUBLISH packets at the head can be taken past paho (:meth:`take_fast`):
    no MQTTMessage, no matcher, no callbacks; they need no acknowledgement. Everything else (CONNACK,
    SUBACK, PINGRESP, QoS 1 PUBLISH, ...) is read by paho's ``loop_read`` as before, in stream order.
    """

    def __init__(self, sock: Any) -> None:
        self._sock = sock
        self._buf = b""
        self._pos = 0
        self._cur_end = 0  # end of the packet paho is reading: recv never serves past it
        self._eof = False

    # -- framing ---------------------------------------------------------------------------------
    def _head_end(self) -> int:
        """End offset of the head packet if it is wholly buffered, else -1."""
        buf, pos = self._buf, self._pos
        n = len(buf)
        i, length, mult = pos + 1, 0, 1
        while i < n:
            b = buf[i]
            length += (b & 0x7F) * mult
            i += 1
            if not b & 0x80:
                end = i + length
                return end if end <= n else -1
            mult *= 128
            if i - pos > 4:  # more than 4 length bytes: malformed; let paho see it and fail the connection
                return n
        return -1

    def has_packet(self) -> bool:
        """Whether a whole packet (or the end of the stream) is waiting for paho."""
        return self._eof or self._pos < self._cur_end or self._head_end() >= 0

    def fill(self) -> bool:
        """Read one chunk from the socket; False when nothing more can be read now (or at the end)."""
        if self._eof:
            return False
        try:
            data = self._sock.recv(_READ_CHUNK)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            self._eof = True  # paho sees the end of the stream and reports the connection lost
            return False
        if not data:
            self._eof = True
            return False
        shift = self._pos
        self._buf = self._buf[shift:] + data if shift < len(self._buf) else data
        self._pos, self._cur_end = 0, max(0, self._cur_end - shift)
        return True

    def take_fast(self, deliver: FastPublish) -> None:
        """Hand every QoS 0 PUBLISH at the head to ``deliver``, until another packet, a partial one, or a stop."""
        while True:
            buf, pos = self._buf, self._pos
            # the head must be a packet of its own, of type PUBLISH (3) with QoS bits 0 (DUP, RETAIN: any)
            if pos < self._cur_end or pos >= len(buf) or buf[pos] & 0xF6 != 0x30:
                return
            end = self._head_end()
            if end < 0:
                return
            i = pos + 1
            while buf[i] & 0x80:
                i += 1
            i += 1
            topic_end = i + 2 + ((buf[i] << 8) | buf[i + 1])
            if topic_end > end:  # malformed: leave it to paho
                return
            self._pos = self._cur_end = end
            if not deliver(buf[i + 2:topic_end].decode("utf-8", "replace"), buf[topic_end:end]):
                return

    # -- what paho calls -------------------------------------------------------------------------
    def recv(self, n: int) -> bytes:
        if self._pos >= self._cur_end:  # paho starts a packet: serve it only once it is whole
            end = self._head_end()
            if end < 0:
                self.fill()
                end = self._head_end()
                if end < 0:
                    if self._eof:
                        return b""
                    raise BlockingIOError  # paho: MQTT_ERR_AGAIN, nothing consumed
            self._cur_end = end
        start = self._pos
        self._pos = min(start + n, self._cur_end)
        return self._buf[start:self._pos]

    def pending(self) -> int:
        """Bytes buffered here and, for TLS, decrypted bytes held by the SSL object."""
        inner = self._sock.pending() if hasattr(self._sock, "pending") else 0
        return len(self._buf) - self._pos + int(inner)

    def __getattr__(self, name: str) -> Any:  # send, close, fileno, setblocking, getpeercert, ...
        return getattr(self._sock, name)


def no_delay(sock: Any) -> None:
    """Turn Nagle's algorithm off on a client socket (paho leaves it on).

    With it on, a small packet written while an earlier one is unacknowledged (a PUBLISH after a PUBLISH,
    a PUBACK after a PUBACK) waits for the broker's delayed ACK: up to 40 ms on Linux. Measured with
    ``benchmarks/mqtt_intake.py``: the publish-to-output tail at 10,000 readings/s was ~40-48 ms, nearly
    all of it this (the load generator's and the broker's sockets too: see the benchmark's README).
    """
    with contextlib.suppress(OSError, AttributeError):  # not TCP (a unix socket, a websocket transport)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


class NoDelayClient(paho.Client):
    """A paho client whose TCP socket sends each packet at once (:func:`no_delay`)."""

    def _create_socket(self) -> Any:
        sock = super()._create_socket()
        no_delay(sock)
        return sock


class BufferedClient(NoDelayClient):
    """A paho client whose socket is a :class:`_FramedSocket` (MQTT 3.1.1 framing), without Nagle's delay."""

    def _create_socket(self) -> Any:
        return _FramedSocket(super()._create_socket())


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
        self.fast: FastPublish | None = None
        """Takes QoS 0 PUBLISH packets past paho's per-message machinery (see :class:`_FramedSocket`)."""
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
        if self._loop is not None and self.client.socket() is not None:
            self._loop.call_soon(self._on_readable)  # packets may be buffered already: no readiness for them

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
        reads = packets = 0
        while reads < _READS_PER_CALLBACK and packets < _PACKETS_PER_CALLBACK:
            if self._paused:
                return
            sock = c.socket()
            if not isinstance(sock, _FramedSocket):
                return
            if self.fast is not None:
                sock.take_fast(self.fast)
                if self._paused:
                    return
            if sock.has_packet():
                packets += 1
                rc = c.loop_read()
                if rc != paho.MQTT_ERR_SUCCESS or c.socket() is None:
                    self._lost(rc)
                    return
            elif sock.fill():
                reads += 1
            elif not sock.has_packet():
                return  # drained to EAGAIN: the selector wakes us (the end of the stream: paho's next read)
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
