"""A TCP proxy on 127.0.0.1 that tests use as the network between two regions.

This kernel has no netem, so latency, loss and partitions between the regions
of a local harness come from here: every connection accepted on the listen
port is relayed to the upstream port, chunk by chunk, through two one-way
pipes ("up": client to upstream, "down": back) that the controls act on.

- Delay: each chunk is held ``delay_ms`` (plus up to ``jitter_ms``, uniform)
  after it was read. A chunk never overtakes the one before it, as on a TCP
  stream: its release time is at least its predecessor's. Half an RTT each
  way gives the RTT (``set_rtt``).
- Loss: the proxy relays TCP streams, not packets, so a lost segment shows up
  the way TCP repairs it: with probability ``loss`` a chunk is held an extra
  ``retransmit_ms`` (200 ms by default, Linux's minimum retransmission
  timeout), and since the stream is in order everything behind it waits too.
  Bytes are never dropped: dropping them would corrupt the HTTP/2 framing
  instead of imitating a lossy link. A connection that dies is ``cut``'s job.
- ``cut()``: every live connection is reset, and new ones are black-holed (the
  default: accepted and then left silent, as when packets vanish, so callers
  wait for their deadline) or refused (``refuse=True``: reset at once, as when
  the peer is known down). ``heal()`` lets black-holed connections through to
  the upstream, late, and new ones as usual.

Counters (``stats``) give the bytes relayed each way and the connections seen,
so a test can tell traffic did (or did not) cross. The controls are plain
methods of an object living in the test's (or ``parley up``'s) event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from dataclasses import dataclass
from types import TracebackType
from typing import Literal

HOST = "127.0.0.1"
CHUNK_BYTES = 64 * 1024
# Chunks a pipe holds before it stops reading: TCP back-pressure, not memory, for a slow side.
PIPE_CHUNKS = 256
# Linux's minimum retransmission timeout: what a lost segment costs a TCP stream.
DEFAULT_RETRANSMIT_MS = 200.0
# How long stop() waits for a connection's tasks after resetting it.
STOP_SECONDS = 5.0

Direction = Literal["up", "down"]
DIRECTIONS: tuple[Direction, Direction] = ("up", "down")


@dataclass
class Link:
    """The faults of one direction."""

    delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    retransmit_ms: float = DEFAULT_RETRANSMIT_MS

    def hold_seconds(self, rng: random.Random) -> float:
        """How long a chunk read now waits before it is written (before ordering)."""
        held = self.delay_ms
        if self.jitter_ms:
            held += rng.uniform(0.0, self.jitter_ms)
        if self.loss and rng.random() < self.loss:
            held += self.retransmit_ms
        return held / 1000.0


@dataclass
class ProxyStats:
    bytes_up: int = 0
    bytes_down: int = 0
    connections: int = 0
    """Connections accepted, whatever became of them."""
    reset: int = 0
    """Live connections reset by cut()."""
    refused: int = 0
    """Connections reset on arrival during a cut with refuse=True."""
    blackholed: int = 0
    """Connections held silent during a cut."""
    upstream_failures: int = 0
    """Connections closed because the upstream port did not accept."""


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN: the peer sees a broken connection, not an orderly end."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class _Connection:
    def __init__(self, client: asyncio.StreamWriter) -> None:
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.task: asyncio.Task[None] | None = None

    def reset(self) -> None:
        _reset(self.client)
        if self.upstream is not None:
            _reset(self.upstream)
        if self.task is not None:
            self.task.cancel()


class FaultProxy:
    """Relays 127.0.0.1:``listen_port`` to 127.0.0.1:``upstream_port`` with injected faults.

    ``listen_port`` 0 takes a free port (``port`` after start). Use as
    ``async with FaultProxy(upstream_port=p) as proxy:`` or start()/stop().
    """

    def __init__(
        self, *, upstream_port: int, listen_port: int = 0, seed: int | None = None
    ) -> None:
        self.upstream_port = upstream_port
        self._listen_port = listen_port
        self.links: dict[Direction, Link] = {"up": Link(), "down": Link()}
        self.stats = ProxyStats()
        self._rng = random.Random(seed)
        self._server: asyncio.Server | None = None
        self._live: set[_Connection] = set()
        self._healed = asyncio.Event()
        self._healed.set()
        self._refuse = False

    # -- lifecycle ---------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            return self._listen_port
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    @property
    def address(self) -> str:
        """host:port to dial instead of the upstream."""
        return f"{HOST}:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(
            self._accept, HOST, self._listen_port, reuse_address=True
        )

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for connection in list(self._live):
            connection.reset()
        tasks = [c.task for c in self._live if c.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=STOP_SECONDS)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- controls ----------------------------------------------------------------

    def set_delay(
        self, delay_ms: float, *, jitter_ms: float = 0.0, direction: Direction | None = None
    ) -> None:
        """Hold every chunk ``delay_ms`` (+ up to ``jitter_ms``) in one direction or both."""
        if delay_ms < 0 or jitter_ms < 0:
            raise ValueError("delay and jitter cannot be negative")
        for name in (direction,) if direction else DIRECTIONS:
            self.links[name].delay_ms = delay_ms
            self.links[name].jitter_ms = jitter_ms

    def set_rtt(self, rtt_ms: float, *, jitter_ms: float = 0.0) -> None:
        """Half of ``rtt_ms`` each way."""
        self.set_delay(rtt_ms / 2, jitter_ms=jitter_ms / 2)

    def set_loss(
        self,
        probability: float,
        *,
        retransmit_ms: float = DEFAULT_RETRANSMIT_MS,
        direction: Direction | None = None,
    ) -> None:
        """Each chunk is "lost" with ``probability`` and then costs ``retransmit_ms`` more."""
        if not 0.0 <= probability <= 1.0:
            raise ValueError("loss is a probability in [0, 1]")
        if retransmit_ms < 0:
            raise ValueError("retransmit_ms cannot be negative")
        for name in (direction,) if direction else DIRECTIONS:
            self.links[name].loss = probability
            self.links[name].retransmit_ms = retransmit_ms

    def clear(self) -> None:
        """No delay and no loss (a cut stays until heal())."""
        self.links = {"up": Link(), "down": Link()}

    @property
    def is_cut(self) -> bool:
        return not self._healed.is_set()

    def cut(self, *, refuse: bool = False) -> None:
        """Reset every live connection; black-hole new ones, or reset them with ``refuse``."""
        self._refuse = refuse
        self._healed.clear()
        for connection in list(self._live):
            connection.reset()
            self.stats.reset += 1

    def heal(self) -> None:
        """Relay again; connections black-holed meanwhile go through now."""
        self._refuse = False
        self._healed.set()

    # -- relaying ----------------------------------------------------------------

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats.connections += 1
        if self.is_cut and self._refuse:
            self.stats.refused += 1
            _reset(writer)
            return
        connection = _Connection(writer)
        connection.task = asyncio.current_task()
        self._live.add(connection)
        try:
            await self._relay(connection, reader)
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass  # reset by cut() or stop(), or by one of the two ends
        finally:
            self._live.discard(connection)
            for end in (connection.client, connection.upstream):
                if end is not None and not end.is_closing():
                    end.close()

    async def _relay(self, connection: _Connection, reader: asyncio.StreamReader) -> None:
        if self.is_cut:
            # Black-holed: nothing is read or answered until the partition heals.
            self.stats.blackholed += 1
            await self._healed.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection(HOST, self.upstream_port)
        except OSError:
            self.stats.upstream_failures += 1
            _reset(connection.client)
            return
        connection.upstream = up_writer
        async with asyncio.TaskGroup() as group:
            group.create_task(self._pipe(connection, "up", reader, up_writer))
            group.create_task(self._pipe(connection, "down", up_reader, connection.client))

    async def _pipe(
        self,
        connection: _Connection,
        direction: Direction,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Read chunks, stamp their release time, write them in order when it comes.

        A reset on either end resets the other: each side sees the connection
        break, as it would without the proxy."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(PIPE_CHUNKS)

        async def read() -> None:
            last = 0.0
            while chunk := await reader.read(CHUNK_BYTES):
                # Never before the previous chunk: a stream keeps its order.
                last = max(last, loop.time() + self.links[direction].hold_seconds(self._rng))
                await queue.put((last, chunk))
            await queue.put((last, b""))

        async def write() -> None:
            while True:
                release, chunk = await queue.get()
                wait = release - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not chunk:
                    # Pass the half-close on: the other direction may still be talking.
                    if writer.can_write_eof():
                        writer.write_eof()
                    return
                writer.write(chunk)
                await writer.drain()
                if direction == "up":
                    self.stats.bytes_up += len(chunk)
                else:
                    self.stats.bytes_down += len(chunk)

        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(read())
                group.create_task(write())
        except* (ConnectionError, OSError):
            connection.reset()
