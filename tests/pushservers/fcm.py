"""Google's OAuth 2.0 token endpoint (service-account jwt-bearer grant) and
FCM's HTTP v1 send endpoint, checking requests as Google's "Using OAuth 2.0
for Server to Server Applications" and Firebase's "Send messages" document
them, with google.rpc error bodies."""

from __future__ import annotations

import json
import re
import secrets
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.pushservers.base import (
    CLOCK_SKEW_SECONDS,
    Answer,
    PushServer,
    Received,
    Refuse,
    json_answer,
    service_account_json,
)

SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
GRANT_TYPE = "urn:ietf:params:oauth:grant-type:jwt-bearer"

_SEND_PATH = re.compile(r"^/v1/projects/([^/]+)/messages:send$")
# Real registration tokens are ~160 such characters; anything else is refused
# the way FCM refuses a malformed token.
_REGISTRATION_TOKEN = re.compile(r"^[A-Za-z0-9_:\-]{16,4096}$")
_DURATION = re.compile(r"^\d+(\.\d{1,9})?s$")
_MESSAGE_FIELDS = frozenset(
    (
        "name",
        "data",
        "notification",
        "android",
        "webpush",
        "apns",
        "fcm_options",
        "token",
        "topic",
        "condition",
    )
)
_ANDROID_FIELDS = frozenset(
    (
        "collapse_key",
        "priority",
        "ttl",
        "restricted_package_name",
        "data",
        "notification",
        "fcm_options",
        "direct_boot_ok",
    )
)
_NOTIFICATION_FIELDS = frozenset(("title", "body", "image"))
_MAX_PAYLOAD_BYTES = 4096
_GOOGLE_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}


def fcm_error(
    code: int,
    message: str,
    *,
    error_code: str | None = None,
    violations: tuple[tuple[str, str], ...] = (),
) -> dict[str, Any]:
    """An FCM v1 error body (google.rpc.Status with FcmError/BadRequest details)."""
    details: list[dict[str, Any]] = []
    if error_code:
        fcm_type = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        details.append({"@type": fcm_type, "errorCode": error_code})
    if violations:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.BadRequest",
                "fieldViolations": [{"field": f, "description": d} for f, d in violations],
            }
        )
    status = _GOOGLE_STATUS.get(code, "UNKNOWN")
    return {"error": {"code": code, "message": message, "status": status, "details": details}}


def _refuse(code: int, message: str, *, field: str = "", error_code: str | None = None) -> Refuse:
    violations = ((field, message),) if field else ()
    body = fcm_error(code, message, error_code=error_code, violations=violations)
    return Refuse(json_answer(code, body), message)


def _invalid(field: str, message: str) -> Refuse:
    return _refuse(400, message, field=field, error_code="INVALID_ARGUMENT")


def check_message(message: Any) -> str:
    """The registration token of a well-formed v1 message; Refuse otherwise."""
    if not isinstance(message, dict):
        raise _invalid("message", "Invalid JSON payload received: message is not an object.")
    for name in message:
        if name not in _MESSAGE_FIELDS:
            raise _invalid("message", f'Invalid JSON payload received. Unknown name "{name}".')
    targets = [k for k in ("token", "topic", "condition") if message.get(k)]
    if len(targets) != 1:
        raise _invalid("message", "Exactly one of token, topic or condition is required.")
    token = str(message.get("token", ""))
    if not _REGISTRATION_TOKEN.match(token):
        message_text = "The registration token is not a valid FCM registration token"
        raise _invalid("message.token", message_text)
    data = message.get("data", {})
    if not isinstance(data, dict):
        raise _invalid("message.data", "data must be a map of strings")
    for key, value in data.items():
        if not isinstance(value, str):
            raise _invalid(f"message.data[{key}].value", "Invalid value (TYPE_STRING expected)")
        if key in ("from", "message_type") or key.startswith(("google", "gcm")):
            raise _invalid(f"message.data[{key}]", "Invalid data key: reserved word")
    notification = message.get("notification", {})
    if not isinstance(notification, dict) or any(
        k not in _NOTIFICATION_FIELDS or not isinstance(v, str) for k, v in notification.items()
    ):
        raise _invalid("message.notification", "Invalid notification: title, body, image")
    android = message.get("android", {})
    if not isinstance(android, dict) or set(android) - _ANDROID_FIELDS:
        raise _invalid("message.android", "Invalid JSON payload received: unknown android field")
    if android.get("priority", "NORMAL") not in ("NORMAL", "HIGH"):
        raise _invalid("message.android.priority", "Invalid value: NORMAL or HIGH")
    if "ttl" in android and not _DURATION.match(str(android["ttl"])):
        raise _invalid("message.android.ttl", "Invalid duration (like '3.5s')")
    apns = message.get("apns", {})
    apns_headers = apns.get("headers", {}) if isinstance(apns, dict) else None
    if not isinstance(apns_headers, dict) or not all(
        isinstance(v, str) for v in apns_headers.values()
    ):
        raise _invalid("message.apns.headers", "Invalid apns headers: string values expected")
    size = len(json.dumps(data).encode()) + len(json.dumps(notification).encode())
    if size > _MAX_PAYLOAD_BYTES:
        raise _invalid("message", "Message payload too big (4096 bytes at most)")
    return token


class FcmServer(PushServer):
    """Google's OAuth2 token endpoint and FCM's HTTP v1 send endpoint."""

    tls = True

    def __init__(
        self,
        directory: Path,
        *,
        project_id: str = "parley-test",
        client_email: str = "push@parley-test.iam.gserviceaccount.com",
        token_lifetime: int = 3599,
    ) -> None:
        super().__init__(directory)
        self.project_id, self.client_email = project_id, client_email
        self.token_lifetime = token_lifetime
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.key_id = secrets.token_hex(20)
        self.service_account_file = directory / "service-account.json"
        self.token_requests: list[Received] = []
        self._access_tokens: dict[str, float] = {}

    @property
    def token_uri(self) -> str:
        return f"{self.base_url}/token"

    def _prepare(self) -> None:
        account = service_account_json(
            project_id=self.project_id,
            client_email=self.client_email,
            key=self.key,
            key_id=self.key_id,
            token_uri=self.token_uri,
        )
        self.service_account_file.write_text(json.dumps(account))

    def config(self) -> dict[str, Any]:
        """``message.push.fcm`` settings pointing at this server."""
        return {
            "endpoint": self.base_url,
            "service_account_file": str(self.service_account_file),
            "project_id": self.project_id,
            "ca_file": str(self.ca_file),
        }

    def _is_push(self, request: Received) -> bool:
        return request.path != "/token"

    def fail(
        self,
        code: int,
        error_code: str | None = None,
        *,
        message: str = "scripted failure",
        times: int | None = 1,
        token: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        body = fcm_error(code, message, error_code=error_code)
        self.script(code, body, headers=headers, times=times, token=token)

    def unregister(self, token: str) -> None:
        self.fail(
            404, "UNREGISTERED", message="Requested entity was not found.", times=None, token=token
        )

    def revoke_access_tokens(self) -> None:
        """Every access token issued so far stops working (401 on send)."""
        self._access_tokens.clear()

    def _handle(self, request: Received, connection: str) -> Answer:
        if request.path == "/token":
            answer = self._issue_token(request)
            request.status = answer.status
            self.token_requests.append(request)
            return answer
        return self._send(request)

    def _issue_token(self, request: Received) -> Answer:
        def refuse(error: str, description: str) -> Refuse:
            body = {"error": error, "error_description": description}
            return Refuse(json_answer(400, body), f"{error}: {description}")

        if request.method != "POST" or not request.headers.get("content-type", "").startswith(
            "application/x-www-form-urlencoded"
        ):
            raise refuse("invalid_request", "expected a form POST")
        form = {k: v[0] for k, v in parse_qs(request.body.decode()).items()}
        if form.get("grant_type") != GRANT_TYPE:
            raise refuse("unsupported_grant_type", "Invalid grant_type")
        assertion = form.get("assertion", "")
        try:
            header = jwt.get_unverified_header(assertion)
            if header.get("alg") != "RS256" or header.get("kid") not in (None, self.key_id):
                raise refuse("invalid_grant", "Invalid JWT Signature.")
            claims = jwt.decode(
                assertion,
                self.key.public_key(),
                algorithms=["RS256"],
                audience=self.token_uri,
                issuer=self.client_email,
                leeway=CLOCK_SKEW_SECONDS,
                options={"require": ["iss", "aud", "iat", "exp", "scope"]},
            )
        except jwt.InvalidSignatureError:
            raise refuse("invalid_grant", "Invalid JWT Signature.") from None
        except jwt.InvalidAudienceError:
            raise refuse("invalid_grant", "Invalid JWT: Failed audience check.") from None
        except jwt.InvalidTokenError as exc:
            raise refuse("invalid_grant", f"Invalid JWT: {exc}") from None
        if claims["exp"] - claims["iat"] > 3600:
            raise refuse("invalid_grant", "Invalid JWT: expiration more than 1 hour after iat")
        if SCOPE not in str(claims["scope"]).split():
            raise refuse("invalid_scope", "firebase.messaging scope missing")
        request.claims = claims
        token = f"ya29.{secrets.token_urlsafe(32)}"
        self._access_tokens[token] = time.time() + self.token_lifetime
        body = {"access_token": token, "expires_in": self.token_lifetime, "token_type": "Bearer"}
        return json_answer(200, body)

    def _send(self, request: Received) -> Answer:
        match = _SEND_PATH.match(request.path)
        if match is None or request.method != "POST":
            raise _refuse(404, "Not Found")
        scheme, _, bearer = request.headers.get("authorization", "").partition(" ")
        expires = self._access_tokens.get(bearer) if scheme.lower() == "bearer" else None
        if expires is None or expires < time.time():
            raise _refuse(401, "Request had invalid authentication credentials.")
        if match.group(1) != self.project_id:
            denied = "Permission 'cloudmessaging.messages.create' denied (or it may not exist)."
            raise _refuse(403, denied)
        try:
            message = json.loads(request.body)["message"]
        except (ValueError, KeyError, TypeError):
            raise _invalid("message", "Invalid JSON payload received.") from None
        token = check_message(message)
        name = f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**19}"
        return self._answer(request, token, json_answer(200, {"name": name}))
