"""The signed webhook provider: one HTTP POST of JSON per notification, for
operators who run their own push gateway.

What a receiver gets::

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <job id>            (the same on every retry of a job)
    X-Parley-Timestamp: <Unix seconds>
    X-Parley-Signature: v1=<hex>

    {"type": "message", "job_id": ..., "conversation_id": ..., "conversation_ids": [...],
     "message_id": ..., "seq": ..., "sender_account_id": ..., "count": ...,
     "alert": {"body": "New message"}, "locale": "de-AT", "attempt": 1,
     "recipient": {"account_id": ..., "device_id": ..., "token": ...}}

The body never holds message text (see ``payload``).

Verifying a request (the receiver's side):

1. Take the raw request body as bytes, before any JSON parsing.
2. Compute ``HMAC-SHA256(key=secret as UTF-8, message=timestamp + "." + body)``
   where ``timestamp`` is the X-Parley-Timestamp header exactly as sent,
   and hex-encode it (lower case).
3. Compare it, in constant time, with the value after ``v1=`` in
   X-Parley-Signature. Ignore other ``<scheme>=`` parts should any appear.
4. Reject the request if the timestamp is more than 5 minutes from your clock:
   the signature covers it, so a captured request cannot be replayed later.
5. Deduplicate on Idempotency-Key: a job is retried after a timeout even if
   the first request got through.

Answer 2xx when accepted, 410 Gone when the recipient's token no longer
exists (Parley forgets it), 408/429/5xx to have the job retried (Retry-After
in seconds is honoured), any other 4xx to have it dead-lettered.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import httpx
import structlog

from parley_core.config import WebhookPushSettings
from svc_message.model import Notification, PushResult
from svc_message.peers.push import common
from svc_message.peers.push.payload import build_payload

log = structlog.get_logger(__name__)

NAME = "webhook"
SIGNATURE_SCHEME = "v1"
TIMESTAMP_HEADER = "X-Parley-Timestamp"
SIGNATURE_HEADER = "X-Parley-Signature"
_RETRY_STATUSES = frozenset({408, 425, 429})


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The X-Parley-Signature value for a body sent at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"{SIGNATURE_SCHEME}={mac.hexdigest()}"


def webhook_body(notification: Notification) -> dict[str, Any]:
    payload = build_payload(notification)
    return {
        **payload.fields(),
        "alert": {"body": payload.alert},
        "locale": notification.locale,
        "attempt": notification.attempt,
        "recipient": {
            "account_id": notification.account_id,
            "device_id": notification.device_id,
            "token": notification.token,
        },
    }


class WebhookProvider:
    def __init__(
        self,
        settings: WebhookPushSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not settings.url or not settings.secret:
            raise ValueError("the webhook provider needs a url and a secret")
        common.quiet_http_logs()
        self._url = settings.url
        self._secret = settings.secret
        self._clock = clock
        # Plain HTTP/1.1 keep-alive: any receiver can speak it. Redirects are
        # not followed, so a signed body only ever goes to the configured URL.
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(settings.timeout_seconds),
            follow_redirects=False,
        )

    async def send(self, notification: Notification) -> PushResult:
        body = common.compact_json(webhook_body(notification))
        timestamp = int(self._clock())
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": notification.job_id,
            TIMESTAMP_HEADER: str(timestamp),
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        try:
            response = await self._client.post(self._url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return common.transport_failure(NAME, exc)
        return self._outcome(response)

    def _outcome(self, response: httpx.Response) -> PushResult:
        status = response.status_code
        detail = f"{NAME}: HTTP {status}"
        if 200 <= status < 300:
            return common.delivered(detail)
        if status == 410:
            return common.rejected(f"{detail} (token gone)", token_gone=True)
        if status in _RETRY_STATUSES or status >= 500:
            return common.retry(detail, common.retry_after(response.headers, self._clock()))
        if 300 <= status < 400:
            log.warning("push_webhook_redirect", status=status)
            return common.rejected(f"{detail} (redirects are not followed)")
        return common.rejected(detail)

    async def close(self) -> None:
        await self._client.aclose()
