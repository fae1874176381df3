"""Delivery streams keep their devices online.

A device holding a stream has a lease in Redis (``parley_core.storage.liveness``,
the same record svc_presence reads): taken when the stream starts, renewed
while it lives, dropped when it ends. One task per process does all of it,
renewing every live stream of the process in one batched call every third
of the lease, so a lease outlives two lost renewals and the cost per stream
is constant.

Presence must never be in the way of messaging: nothing here is awaited by a
stream or a send. When Redis is down or slow the calls fail or time out in
the background, are counted and logged at debug level; streams opened
meanwhile get their lease at the next renewal after Redis is back.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable

import structlog

from parley_core.errors import Reason
from svc_message.domain.streams import StreamSession
from svc_message.ports import DeviceLeases

log = structlog.get_logger(__name__)

# (account, device)
Device = tuple[str, str]

# Devices renewed per Redis round trip.
TOUCH_CHUNK = 1000
# A Redis call that takes longer is abandoned (and counted as failed).
CALL_TIMEOUT_SECONDS = 2.0


class StreamLeases:
    def __init__(
        self,
        leases: DeviceLeases,
        *,
        ttl_seconds: float,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._leases = leases
        self._clock = clock
        self._monotonic = monotonic
        self.refresh_seconds = ttl_seconds / 3
        self._sessions: set[StreamSession] = set()
        # Live streams per device: a device that reconnects to this process
        # before its old stream is gone keeps its lease.
        self._live: Counter[Device] = Counter()
        self._to_touch: set[Device] = set()
        self._to_drop: set[Device] = set()
        # The expiry this process last gave each device's lease: a drop
        # removes only that lease, not a newer one the device took on
        # another process meanwhile.
        self._written: dict[Device, int] = {}
        self._wake = asyncio.Event()
        self.touched = 0
        self.dropped = 0
        self.failures = 0
        self._failing = False

    @property
    def live_devices(self) -> int:
        return len(self._live)

    def opened(self, session: StreamSession) -> None:
        """The session's stream started (its resume was accepted)."""
        if session in self._sessions:
            return
        self._sessions.add(session)
        device = (session.account_id, session.device_id)
        self._live[device] += 1
        self._to_drop.discard(device)
        self._to_touch.add(device)
        self._wake.set()

    def closed(self, session: StreamSession) -> None:
        """The session's stream ended; idempotent."""
        if session not in self._sessions:
            return
        self._sessions.discard(session)
        device = (session.account_id, session.device_id)
        self._live[device] -= 1
        if self._live[device] > 0:
            return
        del self._live[device]
        self._to_touch.discard(device)
        error = session.error
        if error is not None and error.reason == Reason.SHUTTING_DOWN:
            # The device is resuming on another instance right now: dropping
            # its lease would flap it offline and online for every
            # subscriber. Left alone, the lease expires if it does not.
            return
        self._to_drop.add(device)
        self._wake.set()

    async def run(self) -> None:
        """Take, renew and drop leases until cancelled."""
        next_refresh = self._monotonic() + self.refresh_seconds
        while True:
            if not (self._to_touch or self._to_drop):
                remaining = next_refresh - self._monotonic()
                if remaining > 0:
                    try:
                        async with asyncio.timeout(remaining):
                            await self._wake.wait()
                    except TimeoutError:
                        pass
            self._wake.clear()
            if self._monotonic() >= next_refresh:
                next_refresh = self._monotonic() + self.refresh_seconds
                touch = list(self._live)
            else:
                touch = list(self._to_touch)
            self._to_touch.clear()
            drop, self._to_drop = self._to_drop, set()
            await self.step(touch, [d for d in drop if d not in self._live])

    async def step(self, touch: list[Device], drop: list[Device]) -> None:
        now_ms = int(self._clock() * 1000)
        try:
            for i in range(0, len(touch), TOUCH_CHUNK):
                chunk = touch[i : i + TOUCH_CHUNK]
                async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
                    # Whether the account came online, or is due to have its
                    # last seen stored, is svc_presence's business: its
                    # sweeper stores last seen when the account goes offline.
                    touched = await self._leases.touch_many(chunk, stream=True, now_ms=now_ms)
                for device, result in zip(chunk, touched, strict=True):
                    self._written[device] = result.expiry_ms
                self.touched += len(chunk)
            for device in drop:
                account_id, device_id = device
                async with asyncio.timeout(CALL_TIMEOUT_SECONDS):
                    await self._leases.drop(
                        account_id,
                        device_id,
                        stream=True,
                        now_ms=now_ms,
                        if_expiry_ms=self._written.get(device),
                    )
                self._written.pop(device, None)
                self.dropped += 1
        except Exception as exc:
            # Redis errors cannot be named here (the domain imports no
            # driver): anything that fails is a lease not renewed, which the
            # next renewal makes good (and a lease not dropped expires).
            self.failures += 1
            if not self._failing:
                log.warning("stream_leases_failing", error=repr(exc))
            else:
                log.debug("stream_leases_failed", error=repr(exc))
            self._failing = True
            return
        if self._failing:
            log.info("stream_leases_recovered")
            self._failing = False
