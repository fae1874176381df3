"""The presence channels this process listens to, over one pub/sub connection.

Each account with a subscriber here (as a watched user or as the viewer)
has its channel ``parley:p:c:<account>`` subscribed once, reference counted,
so a presence change reaches only the processes whose subscribers may care.

``subscribe`` returns once Redis confirmed the subscription: anything
published after that reaches this process, so a snapshot read afterwards
cannot miss a change. One task writes (UNSUBSCRIBE is queued, so it can be
called from cleanup code), one reads, and a watchdog PINGs the connection
every few seconds and expects the pong back: a Redis that hangs, or a
connection that silently died, is noticed within seconds instead of never.
The process's own keepalive channel is subscribed first: its confirmation
says the connection is up. When the connection is lost every subscriber is
told (``on_disconnect``), since changes may have been missed; the listener
then reconnects with backoff, or at once when a subscriber asks for it.

On a Redis Cluster the channels are sharded and named by the accounts'
presence shards (``PresenceKeys``); "the connection" is then one per master
that holds a channel of ours, each pinged by the watchdog, and losing any
of them counts as losing the connection (parley_core.storage.pubsub).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterable

import structlog

from parley_core.storage.liveness import PresenceKeys
from parley_core.storage.redis import REDIS_ERRORS, Redis, Subscription
from parley_core.tasks import stop_tasks
from svc_presence.model import PresenceStoreDown

log = structlog.get_logger(__name__)

KEEPALIVE_PREFIX = "parley:p:k:"
WATCHDOG_SECONDS = 5.0
# The least time the connection gets to confirm a subscription or answer a
# ping before it counts as lost. Derived from the per-command timeout alone
# (0.5 s by default), a busy process on a loaded machine read its own late
# pong as a dead Redis and ended every subscription; a hang is still noticed
# within seconds.
LIVENESS_FLOOR_SECONDS = 5.0
BACKOFF_MIN_SECONDS = 0.05
# Short, so that after a cluster failover (seconds) presence is heard again soon.
BACKOFF_MAX_SECONDS = 0.25
STABLE_SECONDS = 1.0
_CONNECTION_LOST: tuple[type[Exception], ...] = (*REDIS_ERRORS, PresenceStoreDown)


class PresenceChannels:
    def __init__(
        self,
        redis: Redis,
        *,
        keys: PresenceKeys,
        timeout_seconds: float,
        on_message: Callable[[str, bytes], None],
        on_disconnect: Callable[[], None],
        watchdog_seconds: float = WATCHDOG_SECONDS,
    ) -> None:
        # A client of its own, without retries: redis-py would otherwise
        # reconnect and resubscribe behind our back, hiding a gap in events.
        self._redis = redis
        self._keys = keys
        self._timeout = timeout_seconds
        self._on_message = on_message
        self._on_disconnect = on_disconnect
        self._watchdog_seconds = watchdog_seconds
        self._keepalive = KEEPALIVE_PREFIX + secrets.token_hex(8)
        self._refs: Counter[str] = Counter()
        self._confirmed: set[str] = set()
        self._waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._to_subscribe: set[str] = set()
        self._to_unsubscribe: set[str] = set()
        self._wake = asyncio.Event()
        self._connected = asyncio.Event()
        self._retry_now = asyncio.Event()
        # Set when a connection attempt ends, either way.
        self._attempt_over = asyncio.Event()
        # The watchdog's wait for its pongs, and how many are still to come.
        self._echo: asyncio.Future[None] | None = None
        self._pongs_due = 0
        self._connected_at = 0.0
        self.reconnects = 0

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def channel_count(self) -> int:
        return len(self._refs)

    # -- used by the hub -----------------------------------------------------------

    async def subscribe(self, account_ids: Iterable[str]) -> None:
        """Listen to these accounts' channels (reference counted); returns once
        Redis confirmed them, or raises PresenceStoreDown (nothing is then held)."""
        names = [self._keys.channel(a) for a in account_ids]
        if not self._connected.is_set():
            # Try now rather than at the end of the backoff, and answer as
            # soon as that attempt is over (a refused connection is quick).
            self._attempt_over.clear()
            self._retry_now.set()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._timeout):
                    await self._attempt_over.wait()
            if not self._connected.is_set():
                raise PresenceStoreDown("the presence pub/sub connection is down")
        loop = asyncio.get_running_loop()
        pending: list[asyncio.Future[None]] = []
        for name in names:
            self._refs[name] += 1
            self._to_unsubscribe.discard(name)
            if name not in self._confirmed:
                future: asyncio.Future[None] = loop.create_future()
                self._waiters.setdefault(name, []).append(future)
                self._to_subscribe.add(name)
                pending.append(future)
        if not pending:
            return
        self._wake.set()
        try:
            async with asyncio.timeout(self._timeout * 2):
                await asyncio.gather(*pending)
        except BaseException as exc:
            self._release(names)
            for future in pending:
                future.cancel()
            if isinstance(exc, TimeoutError | PresenceStoreDown):
                raise PresenceStoreDown("Redis did not confirm the subscription") from None
            raise

    def unsubscribe(self, account_ids: Iterable[str]) -> None:
        """Stop listening (once no one else here listens); never blocks."""
        self._release([self._keys.channel(a) for a in account_ids])

    def _release(self, names: list[str]) -> None:
        for name in names:
            if self._refs[name] <= 1:
                self._refs.pop(name, None)
                self._to_subscribe.discard(name)
                self._to_unsubscribe.add(name)
            else:
                self._refs[name] -= 1
        self._wake.set()

    # -- the connection ------------------------------------------------------------

    async def run(self) -> None:
        """Listen until cancelled, reconnecting with backoff."""
        backoff = BACKOFF_MIN_SECONDS
        while True:
            subscription = self._redis.subscription()
            tasks: list[asyncio.Task[None]] = []
            try:
                async with asyncio.timeout(self._timeout * 2):
                    await subscription.subscribe(self._keepalive)
                tasks = [
                    asyncio.create_task(self._read(subscription)),
                    asyncio.create_task(self._write(subscription)),
                    asyncio.create_task(self._watch(subscription)),
                ]
                done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    error = task.exception()
                    if error is not None:
                        raise error
            except _CONNECTION_LOST as exc:
                if self._connected.is_set():
                    log.warning("presence_channels_disconnected", error=repr(exc))
                else:
                    log.debug("presence_channels_connect_failed", error=repr(exc))
            except Exception:
                # Anything else is a bug; the listener must outlive it all the same.
                log.exception("presence_channels_crashed")
            finally:
                await stop_tasks(tasks)
                was_connected = self._connected.is_set()
                self._lost()
                self._attempt_over.set()
                with contextlib.suppress(Exception):
                    await subscription.aclose()
                if was_connected:
                    self._on_disconnect()
                    # A connection that held a while starts the backoff over;
                    # one that broke at once (a cluster master still failing
                    # over) lets it grow, instead of reconnecting every 50 ms.
                    if time.monotonic() - self._connected_at >= STABLE_SECONDS:
                        backoff = BACKOFF_MIN_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._retry_now.wait()
            self._retry_now.clear()
            backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)

    def _lost(self) -> None:
        self._connected.clear()
        self._confirmed.clear()
        self._to_subscribe.clear()
        self._to_unsubscribe.clear()
        for futures in self._waiters.values():
            for future in futures:
                if not future.done():
                    future.set_exception(PresenceStoreDown("the pub/sub connection was lost"))
                    # Retrieved here so an abandoned waiter logs nothing.
                    future.exception()
        self._waiters.clear()
        if self._echo is not None and not self._echo.done():
            self._echo.cancel()
        self._echo = None

    async def _read(self, subscription: Subscription) -> None:
        async for heard in subscription.listen():
            if heard.kind == "message":
                account_id = self._keys.account_of(heard.channel)
                if account_id is not None:
                    self._on_message(account_id, heard.data)
            elif heard.kind == "pong":
                # A pong may come back before ping() returned its count: the
                # count goes negative first, and is added to after.
                self._pongs_due -= 1
                if self._pongs_due == 0 and self._echo is not None and not self._echo.done():
                    self._echo.set_result(None)
            elif heard.kind == "subscribe":
                if heard.channel == self._keepalive:
                    self._connected_at = time.monotonic()
                    self._connected.set()
                    self._attempt_over.set()
                    # After a reconnect: whoever still holds a channel gets it back.
                    self._to_subscribe.update(self._refs)
                    self._wake.set()
                elif heard.channel in self._refs:
                    self._confirmed.add(heard.channel)
                    for future in self._waiters.pop(heard.channel, []):
                        if not future.done():
                            future.set_result(None)
        raise PresenceStoreDown("the pub/sub connection stopped listening")

    async def _write(self, subscription: Subscription) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._connected.is_set():
                continue
            gone = [n for n in self._to_unsubscribe if n not in self._refs]
            fresh = [n for n in self._to_subscribe if n in self._refs and n not in self._confirmed]
            self._to_unsubscribe.clear()
            self._to_subscribe.clear()
            async with asyncio.timeout(self._liveness_deadline()):
                if gone:
                    self._confirmed.difference_update(gone)
                    await subscription.unsubscribe(*gone)
                if fresh:
                    await subscription.subscribe(*fresh)

    def _liveness_deadline(self) -> float:
        return max(self._timeout * 2 + 1.0, LIVENESS_FLOOR_SECONDS)

    async def _watch(self, subscription: Subscription) -> None:
        deadline = self._liveness_deadline()
        try:
            async with asyncio.timeout(deadline):
                await self._connected.wait()
        except TimeoutError:
            raise PresenceStoreDown("Redis did not confirm the keepalive subscription") from None
        while True:
            await asyncio.sleep(self._watchdog_seconds)
            self._echo = asyncio.get_running_loop().create_future()
            self._pongs_due = 0
            try:
                async with asyncio.timeout(deadline):
                    self._pongs_due += await subscription.ping()
                    if self._pongs_due > 0:
                        await self._echo
            except TimeoutError:
                raise PresenceStoreDown("the pub/sub connection stopped answering") from None
            finally:
                self._echo = None
