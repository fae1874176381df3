"""Firebase Cloud Messaging, HTTP v1 API, as Firebase's "Send messages"
and "Authorize send requests" documents describe it.

Authentication is OAuth 2.0 for a service account, done by hand (no Google
SDK): an RS256 JWT assertion ``{iss: client_email, scope, aud: token_uri,
iat, exp}`` signed with the account's private key is exchanged at
``token_uri`` (grant type jwt-bearer) for an access token, which is reused
until shortly before it expires and dropped when FCM answers 401.

Errors follow google.rpc: ``{"error": {"code", "status", "message",
"details": [{"@type": ".../google.firebase.fcm.v1.FcmError", "errorCode"}]}}``.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import structlog
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from parley_core.config import ConfigError, FcmPushSettings
from svc_message.model import Notification, PushResult
from svc_message.peers.push import common
from svc_message.peers.push.payload import build_payload

log = structlog.get_logger(__name__)

NAME = "fcm"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"
DEFAULT_TOKEN_URI = "https://oauth2.googleapis.com/token"
ASSERTION_LIFETIME_SECONDS = 3600
# An access token is renewed this long before it expires (at most a tenth
# of its life), so no request goes out with one about to lapse.
TOKEN_EXPIRY_MARGIN_SECONDS = 300
# Kept by FCM while the device is offline.
TTL_SECONDS = 24 * 3600
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
BAD_REQUEST_TYPE = "type.googleapis.com/google.rpc.BadRequest"
# Registration tokens are printable ASCII without spaces.
MAX_TOKEN_LENGTH = 4096


@dataclass(frozen=True, slots=True)
class ServiceAccount:
    client_email: str
    private_key: rsa.RSAPrivateKey
    private_key_id: str
    token_uri: str
    project_id: str


def load_service_account(path: Path) -> ServiceAccount:
    key_name = "message.push.fcm.service_account_file"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"config key {key_name}: cannot read {path}: {exc}") from None
    if not isinstance(info, dict):
        raise ConfigError(f"config key {key_name}: {path} is not a JSON object")
    missing = [k for k in ("client_email", "private_key") if not info.get(k)]
    if missing:
        raise ConfigError(f"config key {key_name}: {path} lacks {', '.join(missing)}")
    try:
        key = load_pem_private_key(str(info["private_key"]).encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"config key {key_name}: bad private_key: {exc}") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError(f"config key {key_name}: private_key is not an RSA key")
    return ServiceAccount(
        client_email=str(info["client_email"]),
        private_key=key,
        private_key_id=str(info.get("private_key_id") or ""),
        token_uri=str(info.get("token_uri") or DEFAULT_TOKEN_URI),
        project_id=str(info.get("project_id") or ""),
    )


class _NoAccessToken(Exception):
    def __init__(self, result: PushResult) -> None:
        super().__init__(result.detail)
        self.result = result


def fcm_message(notification: Notification) -> dict[str, Any]:
    payload = build_payload(notification)
    thread = payload.conversation_id
    aps: dict[str, Any] = {"mutable-content": 1, "sound": "default", "thread-id": thread}
    apns_headers = {"apns-priority": "10", "apns-push-type": "alert"}
    android: dict[str, Any] = {"priority": "HIGH", "ttl": f"{TTL_SECONDS}s"}
    if thread:
        android["collapse_key"] = thread
        apns_headers["apns-collapse-id"] = thread
    return {
        "message": {
            "token": notification.token,
            "data": payload.data(),
            "notification": {"body": payload.alert},
            "android": android,
            "apns": {"headers": apns_headers, "payload": {"aps": aps}},
        }
    }


def _fcm_error(body: dict[str, Any]) -> tuple[str, str, bool]:
    """(status, FcmError code, whether the details blame the token)."""
    error = body.get("error")
    if not isinstance(error, dict):
        return "", "", False
    status = str(error.get("status", ""))
    code = ""
    token_blamed = "registration token" in str(error.get("message", "")).lower()
    details = error.get("details")
    for item in details if isinstance(details, list) else ():
        if not isinstance(item, dict):
            continue
        if item.get("@type") == FCM_ERROR_TYPE:
            code = str(item.get("errorCode", ""))
        elif item.get("@type") == BAD_REQUEST_TYPE:
            violations = item.get("fieldViolations")
            for violation in violations if isinstance(violations, list) else ():
                if isinstance(violation, dict) and violation.get("field") == "message.token":
                    token_blamed = True
    return status, code, token_blamed


class FcmProvider:
    def __init__(
        self,
        settings: FcmPushSettings,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.service_account_file is None:
            raise ValueError("the FCM provider needs a service account file")
        common.quiet_http_logs()
        self._account = load_service_account(settings.service_account_file)
        project = settings.project_id or self._account.project_id
        if not project:
            raise ConfigError(
                "config key message.push.fcm.project_id: missing (and not in the service account)"
            )
        self._send_url = f"{settings.endpoint.rstrip('/')}/v1/projects/{project}/messages:send"
        self._clock = clock
        self._access_token = ""
        self._renew_at = 0.0
        self._lock = asyncio.Lock()
        self._client = httpx.AsyncClient(
            http2=True,
            verify=common.verify_setting(settings.ca_file),
            timeout=httpx.Timeout(settings.timeout_seconds),
            follow_redirects=False,
        )

    def _assertion(self, now: int) -> str:
        account = self._account
        claims = {
            "iss": account.client_email,
            "scope": SCOPE,
            "aud": account.token_uri,
            "iat": now,
            "exp": now + ASSERTION_LIFETIME_SECONDS,
        }
        headers = {"kid": account.private_key_id} if account.private_key_id else None
        return jwt.encode(claims, account.private_key, algorithm="RS256", headers=headers)

    async def _token(self) -> str:
        if self._access_token and self._clock() < self._renew_at:
            return self._access_token
        # One exchange at a time: the requests waiting meanwhile reuse its token.
        async with self._lock:
            if self._access_token and self._clock() < self._renew_at:
                return self._access_token
            await self._exchange()
            return self._access_token

    async def _exchange(self) -> None:
        now = int(self._clock())
        form = {"grant_type": GRANT_TYPE, "assertion": self._assertion(now)}
        try:
            response = await self._client.post(self._account.token_uri, data=form)
        except httpx.HTTPError as exc:
            raise _NoAccessToken(common.transport_failure(f"{NAME} token", exc)) from None
        body = common.json_object(response)
        token = body.get("access_token")
        if response.status_code != 200 or not isinstance(token, str) or not token:
            error = str(body.get("error", ""))
            detail = f"{NAME} token: HTTP {response.status_code} {error}".rstrip()
            # invalid_grant and friends are our configuration (key, clock);
            # notifications wait for the operator rather than being dropped.
            log.error("push_fcm_token_refused", status=response.status_code, error=error)
            after = common.retry_after(response.headers, self._clock())
            raise _NoAccessToken(common.retry(detail, after))
        expires_in = body.get("expires_in")
        lifetime = float(expires_in) if isinstance(expires_in, int | float) else 3600.0
        margin = min(TOKEN_EXPIRY_MARGIN_SECONDS, lifetime / 10)
        self._access_token = token
        self._renew_at = now + lifetime - margin

    async def send(self, notification: Notification) -> PushResult:
        token = notification.token
        if not token or len(token) > MAX_TOKEN_LENGTH or not token.isprintable() or " " in token:
            return common.rejected(f"{NAME}: malformed registration token", token_gone=True)
        try:
            access_token = await self._token()
        except _NoAccessToken as exc:
            return exc.result
        try:
            response = await self._client.post(
                self._send_url,
                content=common.compact_json(fcm_message(notification)),
                headers={
                    "Authorization": f"Bearer {access_token}",
                    "Content-Type": "application/json; charset=UTF-8",
                },
            )
        except httpx.HTTPError as exc:
            return common.transport_failure(NAME, exc)
        return self._outcome(response, access_token)

    def _outcome(self, response: httpx.Response, access_token: str) -> PushResult:
        status = response.status_code
        if status == 200:
            return common.delivered(f"{NAME}: 200")
        error_status, code, token_blamed = _fcm_error(common.json_object(response))
        detail = f"{NAME}: {status} {code or error_status}".rstrip()
        after = common.retry_after(response.headers, self._clock())
        if code == "UNREGISTERED":
            return common.rejected(detail, token_gone=True)
        if code == "SENDER_ID_MISMATCH":
            # The token belongs to another Firebase project: never ours to use.
            return common.rejected(detail, token_gone=True)
        if status == 400:
            return common.rejected(detail, token_gone=token_blamed)
        if status == 401 and code != "THIRD_PARTY_AUTH_ERROR":
            if access_token == self._access_token:
                self._access_token = ""
            return common.retry(detail, after)
        if status in (401, 403):
            # Our credentials or Firebase's APNs credentials: configuration.
            log.error("push_fcm_forbidden", status=status, code=code or error_status)
            return common.retry(detail, after)
        if status == 429 or status >= 500:
            return common.retry(detail, after)
        return common.rejected(detail)

    async def close(self) -> None:
        await self._client.aclose()
