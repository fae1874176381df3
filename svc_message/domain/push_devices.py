"""Push tokens and do-not-disturb settings: what the push RPCs change.

A device has at most one token (registering again replaces it), and a token
belongs to one device (registering it moves it). Removing it, or revoking the
device, also drops the device's pending notifications. The
caller's identity comes from its access token, never from the request.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime

import structlog

from parley_core.limits import Limiter, LimitName, Take
from svc_message.model import DoNotDisturb, PushToken
from svc_message.model.push import StoredPushSettings
from svc_message.storage.push import PushOutbox, PushSettingsStore, PushTokenStore

log = structlog.get_logger(__name__)

DEFAULT_LOCALE = "en"
# Revocations are announced more than once (pub/sub and the overlapping
# polls): the devices handled lately are remembered to skip the repeats.
RECENT_REVOCATIONS = 4096


def _at(now: float) -> datetime:
    # Millisecond precision, as the database stores it.
    return datetime.fromtimestamp(int(now * 1000) / 1000, UTC)


class PushDevices:
    def __init__(
        self,
        tokens: PushTokenStore,
        settings: PushSettingsStore,
        outbox: PushOutbox,
        *,
        limits: Limiter,
        clock: Callable[[], float],
    ) -> None:
        self._limits = limits
        self._tokens = tokens
        self._settings = settings
        self._outbox = outbox
        self._clock = clock
        self._revoked: OrderedDict[str, None] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()

    async def register(
        self, *, account_id: str, device_id: str, provider: int, token: str, locale: str
    ) -> PushToken:
        now = self._clock()
        await self._limits.take(self._token_change(account_id, device_id), now=now)
        registration = PushToken(
            account_id=account_id,
            device_id=device_id,
            provider=provider,
            token=token,
            locale=locale or DEFAULT_LOCALE,
            updated_at=_at(now),
        )
        for device in await self._tokens.put(registration):
            await self._outbox.remove_pending(device)
        return registration

    async def remove(self, *, account_id: str, device_id: str) -> None:
        """Idempotent: removing a token that is not there is no error."""
        await self._limits.take(self._token_change(account_id, device_id), now=self._clock())
        await self._tokens.remove(device_id, account_id=account_id)
        await self._outbox.remove_pending(device_id)

    @staticmethod
    def _token_change(account_id: str, device_id: str) -> Take:
        return Take(LimitName.PUSH_TOKEN_PER_DEVICE, account_id, key=device_id)

    async def settings(self, account_id: str) -> StoredPushSettings:
        return await self._settings.get(account_id)

    async def update_settings(self, account_id: str, dnd: DoNotDisturb) -> StoredPushSettings:
        now = _at(self._clock())
        await self._settings.put(account_id, dnd, now=now)
        return StoredPushSettings(dnd, now)

    def device_revoked(self, device_id: str) -> None:
        """The revocation feed's callback (synchronous): forget the device's
        token and pending notifications in the background. The worker also
        checks revocations before each send, so a failure here loses nothing."""
        if device_id in self._revoked:
            return
        self._revoked[device_id] = None
        while len(self._revoked) > RECENT_REVOCATIONS:
            self._revoked.popitem(last=False)
        task = asyncio.get_running_loop().create_task(self._forget(device_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _forget(self, device_id: str) -> None:
        try:
            await self._tokens.remove(device_id)
            await self._outbox.remove_pending(device_id)
        except Exception as exc:
            self._revoked.pop(device_id, None)
            log.warning("push_token_revocation_failed", error=str(exc))
