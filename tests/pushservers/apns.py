"""APNs' provider API (HTTP/2 only, token authentication) for one team,
key and app, checking requests as Apple's "Sending notification requests to
APNs" documents them and answering with its status codes and reasons."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import jwt

from tests.pushservers.base import (
    CLOCK_SKEW_SECONDS,
    Answer,
    PushServer,
    Received,
    Refuse,
    json_answer,
    write_p8_key,
)

TOKEN_MAX_AGE_SECONDS = 3600
TOKEN_MIN_REFRESH_SECONDS = 20 * 60
MAX_PAYLOAD_BYTES = 4096

_APNS_PATH = re.compile(r"^/3/device/([^/]*)$")
_HEX_TOKEN = re.compile(r"^(?:[0-9a-fA-F]{2})+$")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_PUSH_TYPES = frozenset(
    (
        "alert",
        "background",
        "location",
        "voip",
        "complication",
        "fileprovider",
        "mdm",
        "liveactivity",
        "pushtotalk",
    )
)


class ApnsServer(PushServer):
    """APNs' provider API for one team, key and app."""

    tls = True
    # Only h2 is offered; a client that cannot speak it is refused below.
    alpn = ("h2",)

    def __init__(
        self,
        directory: Path,
        *,
        team_id: str = "PARLEYTEAM",
        key_id: str = "PARLEYKEY1",
        topic: str = "dev.parley.app",
        check_token_updates: bool = True,
    ) -> None:
        super().__init__(directory)
        self.team_id, self.key_id, self.topic = team_id, key_id, topic
        self.key_file = directory / f"AuthKey_{key_id}.p8"
        self.public_key = write_p8_key(self.key_file).public_key()
        self.check_token_updates = check_token_updates
        # Per connection: the provider token in use and its iat.
        self.connection_tokens: dict[str, tuple[str, int]] = {}

    def config(self) -> dict[str, Any]:
        """``message.push.apns`` settings pointing at this server."""
        return {
            "endpoint": self.base_url,
            "team_id": self.team_id,
            "key_id": self.key_id,
            "private_key_file": str(self.key_file),
            "topic": self.topic,
            "ca_file": str(self.ca_file),
        }

    def fail(
        self,
        status: int,
        reason: str,
        *,
        times: int | None = 1,
        token: str | None = None,
        retry_after: int | None = None,
    ) -> None:
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        self.script(status, {"reason": reason}, headers=headers, times=times, token=token)

    def unregister(self, token: str) -> None:
        body = {"reason": "Unregistered", "timestamp": int(time.time() * 1000)}
        self.script(410, body, token=token, times=None)

    def _handle(self, request: Received, connection: str) -> Answer:
        def refuse(status: int, reason: str) -> Refuse:
            return Refuse(json_answer(status, {"reason": reason}), reason)

        if request.http_version != "2":
            raise Refuse(Answer(505, b"HTTP/2 required"), f"HTTP/{request.http_version}")
        match = _APNS_PATH.match(request.path)
        if match is None:
            raise refuse(404, "BadPath")
        if request.method != "POST":
            raise refuse(405, "MethodNotAllowed")
        device_token = match.group(1)
        if not device_token:
            raise refuse(400, "MissingDeviceToken")
        if not _HEX_TOKEN.match(device_token):
            raise refuse(400, "BadDeviceToken")
        request.claims = self._check_provider_token(request, connection, refuse)
        headers = request.headers
        if "apns-topic" not in headers:
            raise refuse(400, "MissingTopic")
        if headers["apns-topic"] != self.topic:
            raise refuse(400, "DeviceTokenNotForTopic")
        push_type = headers.get("apns-push-type", "")
        if push_type not in _PUSH_TYPES:
            raise refuse(400, "InvalidPushType")
        if not _UUID.match(headers.get("apns-id", "")):
            raise refuse(400, "BadMessageId")
        if headers.get("apns-priority", "10") not in ("5", "10"):
            raise refuse(400, "BadPriority")
        if not headers.get("apns-expiration", "0").isdigit():
            raise refuse(400, "BadExpirationDate")
        if len(headers.get("apns-collapse-id", "").encode()) > 64:
            raise refuse(400, "BadCollapseId")
        if not request.body:
            raise refuse(400, "PayloadEmpty")
        if len(request.body) > MAX_PAYLOAD_BYTES:
            raise refuse(413, "PayloadTooLarge")
        try:
            payload = json.loads(request.body)
        except ValueError:
            raise refuse(400, "BadPayload") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("aps"), dict):
            raise refuse(400, "BadPayload")
        if push_type == "alert" and "alert" not in payload["aps"]:
            raise refuse(400, "BadPayload")
        success = Answer(200, headers={"apns-id": headers["apns-id"]})
        return self._answer(request, device_token, success)

    def _check_provider_token(
        self, request: Received, connection: str, refuse: Any
    ) -> dict[str, Any]:
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise refuse(403, "MissingProviderToken")
        try:
            header = jwt.get_unverified_header(token)
            if header.get("alg") != "ES256" or header.get("kid") != self.key_id:
                raise refuse(403, "InvalidProviderToken")
            claims = jwt.decode(
                token,
                self.public_key,
                algorithms=["ES256"],
                issuer=self.team_id,
                options={"require": ["iss", "iat"], "verify_iat": False},
            )
        except jwt.InvalidTokenError:
            raise refuse(403, "InvalidProviderToken") from None
        iat = claims["iat"]
        now = time.time()
        if not isinstance(iat, int) or iat > now + CLOCK_SKEW_SECONDS:
            raise refuse(403, "InvalidProviderToken")
        if now - iat > TOKEN_MAX_AGE_SECONDS:
            raise refuse(403, "ExpiredProviderToken")
        previous = self.connection_tokens.get(connection)
        if (
            self.check_token_updates
            and previous is not None
            and previous[0] != token
            and iat - previous[1] < TOKEN_MIN_REFRESH_SECONDS
        ):
            raise refuse(429, "TooManyProviderTokenUpdates")
        self.connection_tokens[connection] = (token, iat)
        return claims
