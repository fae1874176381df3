"""The S3 client every service opens the same way (svc_media's objects,
svc_message's history archive): credentials from the ``*_file`` paths of the
``s3`` section, SigV4, the configured addressing style, short timeouts and
two attempts."""

from __future__ import annotations

import contextlib
import re
from email.utils import parsedate_to_datetime
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from parley_core.config import S3Settings

_ONGOING = re.compile(r'ongoing-request\s*=\s*"(true|false)"')
_EXPIRY = re.compile(r'expiry-date\s*=\s*"([^"]+)"')
# Storage classes whose objects need a RestoreObject before a GET.
ARCHIVE_CLASSES = frozenset({"GLACIER", "DEEP_ARCHIVE"})


def parse_restore(header: str | None) -> tuple[bool, float | None]:
    """(a restore is running, the restored copy's expiry in Unix seconds) from
    ``x-amz-restore``: ``ongoing-request="true"``, or ``ongoing-request="false",
    expiry-date="Fri, 21 Dec 2012 00:00:00 GMT"`` once the copy is readable."""
    if not header:
        return False, None
    ongoing = _ONGOING.search(header)
    if ongoing is not None and ongoing.group(1) == "true":
        return True, None
    expiry = _EXPIRY.search(header)
    if ongoing is None or expiry is None:
        return False, None
    try:
        return False, parsedate_to_datetime(expiry.group(1)).timestamp()
    except (TypeError, ValueError):
        return False, None


def read_credentials(settings: S3Settings) -> dict[str, str]:
    """Client keyword arguments for the key pair; none without files (the
    default chain then applies: an IAM role)."""
    if settings.access_key_id_file is None or settings.secret_access_key_file is None:
        return {}
    return {
        "aws_access_key_id": settings.access_key_id_file.read_text().strip(),
        "aws_secret_access_key": settings.secret_access_key_file.read_text().strip(),
    }


def signing_options(settings: S3Settings) -> dict[str, Any]:
    """Config options shared by the async client and a presigner."""
    return {
        "signature_version": "s3v4",
        "s3": {"addressing_style": settings.addressing_style},
        # Newer botocore adds CRC checksums to every upload; not every
        # S3-compatible store takes them, and ours are explicit.
        "request_checksum_calculation": "when_required",
        "response_checksum_validation": "when_required",
    }


async def open_client(
    settings: S3Settings, *, timeout_seconds: float, exit: contextlib.AsyncExitStack
) -> Any:
    """An aiobotocore S3 client, closed with ``exit``."""
    config = AioConfig(
        connect_timeout=min(timeout_seconds, 5.0),
        read_timeout=timeout_seconds,
        retries={"max_attempts": 2, "mode": "standard"},
        **signing_options(settings),
    )
    return await exit.enter_async_context(
        get_session().create_client(
            "s3",
            region_name=settings.region,
            endpoint_url=settings.endpoint_url or None,
            config=config,
            **read_credentials(settings),
        )
    )
