"""Pieces every push provider shares: HTTP client set-up, Retry-After,
answer mapping helpers, and keeping tokens and secrets out of the logs."""

from __future__ import annotations

import json
import logging
import ssl
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import httpx

from svc_message.model import PushOutcome, PushResult

# A Retry-After further out than this is treated as this: the outbox's own
# backoff cap and dead-letter rules stay in charge of the real waiting.
MAX_RETRY_AFTER_SECONDS = 3600.0

# httpx logs every request URL at INFO (APNs URLs end in the device token) and
# hpack logs every header at DEBUG (bearer tokens). Neither may reach our logs.
_CHATTY_LOGGERS = ("httpx", "httpcore", "hpack", "h2")


def quiet_http_logs() -> None:
    for name in _CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


def verify_setting(ca_file: Path | None) -> ssl.SSLContext | bool:
    """TLS verification for httpx: the system's CAs, or only ``ca_file``."""
    if ca_file is None:
        return True
    return ssl.create_default_context(cafile=str(ca_file))


def retry_after(headers: httpx.Headers, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    raw = headers.get("retry-after")
    if raw is None:
        return None
    raw = raw.strip()
    seconds: float
    if raw.isdigit():
        seconds = float(raw)
    else:
        try:
            when = parsedate_to_datetime(raw)
        except (TypeError, ValueError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - now
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_SECONDS)


def json_object(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON object, or {} when it has none (proxies answer HTML)."""
    try:
        parsed = json.loads(response.content) if response.content else {}
    except ValueError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


def transport_failure(provider: str, exc: httpx.HTTPError) -> PushResult:
    # Only the exception's class: some httpx messages quote the URL, and an
    # APNs URL holds the device token.
    return PushResult(PushOutcome.RETRY, detail=f"{provider}: {type(exc).__name__} (no answer)")


def retry(detail: str, after: float | None = None) -> PushResult:
    return PushResult(PushOutcome.RETRY, detail=detail, retry_after_seconds=after)


def rejected(detail: str, *, token_gone: bool = False) -> PushResult:
    return PushResult(PushOutcome.REJECTED, detail=detail, token_gone=token_gone)


def delivered(detail: str = "") -> PushResult:
    return PushResult(PushOutcome.DELIVERED, detail=detail)


def compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
