"""A push gateway receiving Parley's signed webhook (see
svc_message.peers.push.webhook for the scheme it checks)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from pathlib import Path
from typing import Any

from tests.pushservers.base import Answer, PushServer, Received, Refuse, json_answer

TOLERANCE_SECONDS = 300


class WebhookServer(PushServer):
    """A push gateway receiving Parley's signed webhook."""

    def __init__(self, directory: Path, *, secret: str | None = None, path: str = "/push") -> None:
        super().__init__(directory)
        self.secret = secret or secrets.token_urlsafe(24)
        self.path = path

    @property
    def url(self) -> str:
        return f"{self.base_url}{self.path}"

    def config(self) -> dict[str, Any]:
        """``message.push.webhook`` settings pointing at this server."""
        return {"url": self.url, "secret": self.secret}

    def gone(self, token: str) -> None:
        self.script(410, {"error": "token_gone"}, token=token, times=None)

    def _handle(self, request: Received, connection: str) -> Answer:
        def refuse(status: int, reason: str) -> Refuse:
            return Refuse(json_answer(status, {"error": reason}), reason)

        if request.path != self.path:
            raise refuse(404, "not found")
        if request.method != "POST":
            raise refuse(405, "method not allowed")
        if not request.headers.get("content-type", "").startswith("application/json"):
            raise refuse(415, "content-type must be application/json")
        key = request.headers.get("idempotency-key", "")
        if not key:
            raise refuse(400, "missing Idempotency-Key")
        stamp = request.headers.get("x-parley-timestamp", "")
        if not stamp.isdigit():
            raise refuse(401, "missing or malformed X-Parley-Timestamp")
        if abs(time.time() - int(stamp)) > TOLERANCE_SECONDS:
            raise refuse(401, "timestamp outside the 5 minute tolerance")
        expected = hmac.new(
            self.secret.encode(), stamp.encode() + b"." + request.body, hashlib.sha256
        ).hexdigest()
        offered = [
            part.split("=", 1)[1]
            for part in request.headers.get("x-parley-signature", "").split(",")
            if part.strip().startswith("v1=")
        ]
        if not any(hmac.compare_digest(expected, sig.strip()) for sig in offered):
            raise refuse(401, "bad signature")
        try:
            body = json.loads(request.body)
        except ValueError:
            raise refuse(400, "body is not JSON") from None
        recipient = body.get("recipient") if isinstance(body, dict) else None
        shape_ok = (
            isinstance(body, dict)
            and body.get("type") == "message"
            and body.get("job_id") == key
            and isinstance(body.get("count"), int)
            and body["count"] >= 1
            and isinstance(body.get("alert"), dict)
            and isinstance(body["alert"].get("body"), str)
            and isinstance(recipient, dict)
            and isinstance(recipient.get("token"), str)
        )
        if not shape_ok or not isinstance(recipient, dict):
            raise refuse(400, "unexpected body")
        return self._answer(request, recipient["token"], json_answer(200, {"ok": True}))
