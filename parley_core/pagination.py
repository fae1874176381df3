"""Opaque page tokens (AIP-158).

A token is the position to continue from plus a fingerprint of the request
parameters it belongs to, base64url-encoded. Clients must treat it as opaque;
a token reused with different parameters or tampered with is INVALID_ARGUMENT.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from parley_core.errors import InvalidArgument, Reason


def _fingerprint(scope: Mapping[str, Any]) -> str:
    # On every page of every list call: a joined string, not JSON.
    canonical = "\x1f".join(f"{k}={scope[k]}" for k in sorted(scope))
    return hashlib.blake2b(canonical.encode(), digest_size=8).hexdigest()


def encode_page_token(position: Mapping[str, Any], *, scope: Mapping[str, Any]) -> str:
    body = {"p": dict(position), "s": _fingerprint(scope)}
    raw = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(
    token: str, *, scope: Mapping[str, Any], field: str = "page_token"
) -> dict[str, Any]:
    """Return the position a token encodes, or raise INVALID_ARGUMENT naming the field."""
    try:
        padded = token + "=" * (-len(token) % 4)
        body = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
    except (ValueError, UnicodeError, binascii.Error):
        raise InvalidArgument.field(
            field, "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
        ) from None
    if not isinstance(body, dict) or not isinstance(body.get("p"), dict):
        raise InvalidArgument.field(
            field, "not a page token from this API", reason=Reason.PAGE_TOKEN_INVALID
        )
    if body.get("s") != _fingerprint(scope):
        raise InvalidArgument.field(
            field,
            "belongs to a request with other parameters",
            reason=Reason.PAGE_TOKEN_INVALID,
        )
    position: dict[str, Any] = body["p"]
    return position
