"""Keeps the fuzzer's erasure calls off the fuzzer's own accounts: the
erasure RPCs (called with the service credential) would otherwise erase the
accounts every other fuzzed call relies on."""

from __future__ import annotations

import uuid
from collections.abc import Collection
from typing import Any

from google.protobuf import message_factory
from google.protobuf.message import DecodeError

ERASING = frozenset({"EraseAccount", "EraseUploader"})


def spared(
    method: Any, raw: bytes, *, accounts: Collection[str], devices: Collection[str]
) -> bytes:
    """``raw``, with any of ``accounts`` swapped for a random id and any of
    ``devices`` dropped when ``method`` is an erasure; as is otherwise (and
    when it is no valid request: that is what is being fuzzed)."""
    if method.name not in ERASING:
        return raw
    try:
        request = message_factory.GetMessageClass(method.input_type).FromString(raw)
    except DecodeError:
        return raw
    if request.account_id in accounts:
        request.account_id = str(uuid.uuid4())
    if "device_ids" in request.DESCRIPTOR.fields_by_name:
        kept = [d for d in request.device_ids if d not in devices]
        del request.device_ids[:]
        request.device_ids.extend(kept)
    return bytes(request.SerializeToString())
