"""Push providers behind the ``PushProvider`` port (svc_message.ports): a signed webhook,
APNs and FCM, each written against its documented HTTP API.

``build_providers`` makes one provider per configured service; ``Router``
is the single ``PushProvider`` the outbox worker talks to.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

import structlog

from parley_core.config import ConfigError, PushSettings
from svc_message.model import APNS, FCM, WEBHOOK, Notification, PushOutcome, PushResult
from svc_message.peers.push.apns import ApnsProvider
from svc_message.peers.push.fcm import FcmProvider
from svc_message.peers.push.webhook import WebhookProvider
from svc_message.ports import PushProvider

log = structlog.get_logger(__name__)

PROVIDER_NAMES = {WEBHOOK: "webhook", APNS: "apns", FCM: "fcm"}


__all__ = [
    "PROVIDER_NAMES",
    "ApnsProvider",
    "FcmProvider",
    "PushProvider",
    "Router",
    "WebhookProvider",
    "build_providers",
]


def _require(section: str, values: Mapping[str, object]) -> bool:
    """False when nothing of the section is set (the provider is absent);
    True when all of it is; a ConfigError naming the gaps otherwise."""
    given = {name for name, value in values.items() if value}
    if not given:
        return False
    missing = sorted(set(values) - given)
    if missing:
        keys = ", ".join(f"message.push.{section}.{name}" for name in missing)
        raise ConfigError(f"config keys {keys}: missing ({section} push is half configured)")
    return True


def build_providers(
    settings: PushSettings, *, clock: Callable[[], float] = time.time
) -> dict[int, PushProvider]:
    """One provider per configured push service, keyed by the model's
    provider constants. Reads the key files now, so bad ones stop the start."""
    providers: dict[int, PushProvider] = {}
    webhook = settings.webhook
    if _require("webhook", {"url": webhook.url, "secret": webhook.secret}):
        providers[WEBHOOK] = WebhookProvider(webhook, clock=clock)
    apns = settings.apns
    if _require(
        "apns",
        {
            "team_id": apns.team_id,
            "key_id": apns.key_id,
            "private_key_file": apns.private_key_file,
            "topic": apns.topic,
        },
    ):
        providers[APNS] = ApnsProvider(apns, clock=clock)
    fcm = settings.fcm
    # project_id is optional: the service account file names its project.
    if fcm.project_id and fcm.service_account_file is None:
        raise ConfigError(
            "config keys message.push.fcm.service_account_file: missing "
            "(fcm push is half configured)"
        )
    if fcm.service_account_file is not None:
        providers[FCM] = FcmProvider(fcm, clock=clock)
    return providers


class Router:
    """Sends each notification through the provider its token belongs to."""

    def __init__(self, providers: Mapping[int, PushProvider]) -> None:
        self._providers = dict(providers)

    @property
    def configured(self) -> frozenset[int]:
        return frozenset(self._providers)

    async def send(self, notification: Notification) -> PushResult:
        provider = self._providers.get(notification.provider)
        if provider is None:
            name = PROVIDER_NAMES.get(notification.provider, str(notification.provider))
            return PushResult(PushOutcome.REJECTED, detail=f"{name}: provider not configured")
        try:
            return await provider.send(notification)
        except Exception:
            # Providers map every failure they know; anything else is a bug,
            # and the job is better retried than lost with the worker.
            log.exception("push_provider_failed", provider=notification.provider)
            return PushResult(PushOutcome.RETRY, detail="provider failed unexpectedly")

    async def close(self) -> None:
        await asyncio.gather(*(p.close() for p in self._providers.values()))
