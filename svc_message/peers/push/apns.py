"""Apple Push Notification service over its HTTP/2 provider API, with token
(JWT) authentication, as Apple's "Sending notification requests to APNs" and
"Establishing a token-based connection to APNs" describe it.

One long-lived HTTP/2 connection carries every request (APNs refuses
HTTP/1.1 and treats connection churn as abuse). The provider token is an
ES256 JWT ``{alg, kid}`` / ``{iss: team id, iat}`` signed with the .p8 key;
APNs rejects tokens older than an hour and answers TooManyProviderTokenUpdates
to tokens renewed more often than every 20 minutes, so one token is reused
for 50 minutes and renewed early only when APNs calls it expired or invalid
and it is at least 20 minutes old.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from parley_core.config import ApnsPushSettings, ConfigError
from svc_message.model import Notification, PushResult
from svc_message.peers.push import common
from svc_message.peers.push.payload import PushPayload, build_payload

log = structlog.get_logger(__name__)

NAME = "apns"
TOKEN_REUSE_SECONDS = 50 * 60
MIN_TOKEN_REFRESH_SECONDS = 20 * 60
# How long APNs stores the notification while the device is offline.
EXPIRATION_SECONDS = 24 * 3600
MAX_PAYLOAD_BYTES = 4096
MAX_COLLAPSE_ID_BYTES = 64
# Device tokens are hex; 32 bytes today, Apple says not to assume a length.
_DEVICE_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2}){8,200}$")
# A stable namespace so a job's apns-id is the same on every retry.
_APNS_ID_NAMESPACE = uuid.UUID("5f0c4a52-5d3e-4f0e-9a57-6d1b8a0c2e11")

_TOKEN_GONE_REASONS = frozenset({"BadDeviceToken", "DeviceTokenNotForTopic", "Unregistered"})
_PROVIDER_TOKEN_REASONS = frozenset({"ExpiredProviderToken", "InvalidProviderToken"})


def load_signing_key(settings: ApnsPushSettings) -> ec.EllipticCurvePrivateKey:
    """The .p8 key (PKCS#8 PEM, EC P-256) named by the settings."""
    path = settings.private_key_file
    key_name = "message.push.apns.private_key_file"
    if path is None:
        raise ConfigError(f"config key {key_name}: missing")
    try:
        key = load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"config key {key_name}: cannot load {path}: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ConfigError(f"config key {key_name}: {path} is not an EC P-256 key (.p8)")
    return key


def apns_id(job_id: str) -> str:
    """The job id when it is a UUID (Parley ids are), else a UUID derived from it."""
    try:
        return str(uuid.UUID(job_id))
    except ValueError:
        return str(uuid.uuid5(_APNS_ID_NAMESPACE, job_id))


def apns_body(payload: PushPayload) -> bytes:
    """The JSON payload, at most 4 KiB: conversation ids are dropped (count
    still says how many messages) until it fits."""
    ids = payload.conversation_ids
    while True:
        fields = payload.fields()
        fields["conversation_ids"] = list(ids)
        body: dict[str, Any] = {
            "aps": {
                "alert": {"body": payload.alert},
                "sound": "default",
                # Lets the app's notification service extension fetch and
                # decrypt the message and rewrite this generic alert.
                "mutable-content": 1,
                "thread-id": payload.conversation_id,
            },
            "parley": fields,
        }
        encoded = common.compact_json(body)
        if len(encoded) <= MAX_PAYLOAD_BYTES or len(ids) <= 1:
            return encoded
        ids = ids[: len(ids) // 2]


class ApnsProvider:
    def __init__(
        self,
        settings: ApnsPushSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (settings.team_id and settings.key_id and settings.topic):
            raise ValueError("the APNs provider needs team_id, key_id and topic")
        common.quiet_http_logs()
        self._key = load_signing_key(settings)
        self._team_id = settings.team_id
        self._key_id = settings.key_id
        self._topic = settings.topic
        self._base = settings.endpoint.rstrip("/")
        self._clock = clock
        self._token = ""
        self._token_iat = 0
        self._client = httpx.AsyncClient(
            http2=True,
            verify=common.verify_setting(settings.ca_file),
            timeout=httpx.Timeout(settings.timeout_seconds),
            follow_redirects=False,
        )

    def _provider_token(self) -> str:
        now = int(self._clock())
        if not self._token or now - self._token_iat >= TOKEN_REUSE_SECONDS:
            self._token = jwt.encode(
                {"iss": self._team_id, "iat": now},
                self._key,
                algorithm="ES256",
                headers={"kid": self._key_id},
            )
            self._token_iat = now
        return self._token

    def _renew_after_refusal(self, refused: str, reason: str) -> None:
        # Only the token APNs refused, once: many requests in flight share it.
        if refused != self._token:
            return
        age = int(self._clock()) - self._token_iat
        if age >= MIN_TOKEN_REFRESH_SECONDS:
            self._token = ""
        else:
            # A brand-new token refused: renewing cannot help (wrong key, team
            # or clock) and would trip TooManyProviderTokenUpdates.
            log.error("push_apns_token_refused", reason=reason, token_age_seconds=age)

    async def send(self, notification: Notification) -> PushResult:
        token = notification.token
        if not _DEVICE_TOKEN.match(token):
            return common.rejected(f"{NAME}: device token is not hex", token_gone=True)
        payload = build_payload(notification)
        provider_token = self._provider_token()
        headers = {
            "authorization": f"bearer {provider_token}",
            "apns-topic": self._topic,
            "apns-push-type": "alert",
            "apns-priority": "10",
            "apns-expiration": str(int(self._clock()) + EXPIRATION_SECONDS),
            "apns-id": apns_id(notification.job_id),
            "content-type": "application/json",
        }
        collapse_id = payload.conversation_id
        if collapse_id and len(collapse_id.encode()) <= MAX_COLLAPSE_ID_BYTES:
            headers["apns-collapse-id"] = collapse_id
        url = f"{self._base}/3/device/{token}"
        try:
            response = await self._client.post(url, content=apns_body(payload), headers=headers)
        except httpx.HTTPError as exc:
            return common.transport_failure(NAME, exc)
        return self._outcome(response, provider_token)

    def _outcome(self, response: httpx.Response, provider_token: str) -> PushResult:
        status = response.status_code
        if status == 200:
            return common.delivered(f"{NAME}: 200")
        reason = str(common.json_object(response).get("reason", ""))
        detail = f"{NAME}: {status} {reason}".rstrip()
        after = common.retry_after(response.headers, self._clock())
        if reason in _TOKEN_GONE_REASONS or status == 410:
            return common.rejected(detail, token_gone=True)
        if status == 403 and reason in _PROVIDER_TOKEN_REASONS:
            self._renew_after_refusal(provider_token, reason)
            return common.retry(detail, after)
        if status == 403:
            # MissingProviderToken, BadCertificate...: our configuration,
            # not this notification; keep it until the operator fixes it.
            log.error("push_apns_forbidden", reason=reason)
            return common.retry(detail, after)
        if status == 429 or status >= 500:
            return common.retry(detail, after)
        return common.rejected(detail)

    async def close(self) -> None:
        await self._client.aclose()
