"""Rewrite transforms for archived rows: what account erasure does to the
chunks of the history archive (``Archiver.rewrite_weeks_with``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from svc_message.model import HISTORY_KINDS, ChangeKind

# Changes a row in place; True when it changed anything.
Transform = Callable[[dict[str, Any]], bool]


def _is_history(doc: dict[str, Any]) -> bool:
    return doc.get("kind", ChangeKind.MESSAGE) in HISTORY_KINDS


def _replace_id(doc: dict[str, Any], account_id: str, pseudonym: str) -> bool:
    """Every mention of ``account_id`` in a row becomes ``pseudonym``."""
    changed = False

    def swap(values: Iterable[str]) -> list[str]:
        nonlocal changed
        out = []
        for value in values:
            if value == account_id:
                changed = True
                value = pseudonym
            out.append(value)
        return out

    for field in ("sender_id", "deleted_by", "only_for"):
        if doc.get(field) == account_id:
            doc[field] = pseudonym
            changed = True
    if "hidden_for" in doc:
        doc["hidden_for"] = swap(doc["hidden_for"])
    if "reactions" in doc:
        doc["reactions"] = {k: swap(v) for k, v in doc["reactions"].items()}
    system = doc.get("system")
    if system:
        if system.get("actor") == account_id:
            system["actor"] = pseudonym
            changed = True
        system["targets"] = swap(system.get("targets") or ())
    return changed


def tombstone_sender(account_id: str, *, pseudonym: str = "") -> Transform:
    """A rewrite transform: whatever ``account_id`` sent loses its ciphertext
    and media (messages become tombstones, edits lose their bodies); with
    ``pseudonym``, every mention of the account id in a row (sender, deleter,
    reactions, hidden_for, system events) becomes it."""

    def transform(doc: dict[str, Any]) -> bool:
        changed = False
        if doc.get("sender_id") == account_id:
            changed = bool(doc.get("body")) or "media" in doc
            doc["body"] = b""
            doc.pop("media", None)
            if _is_history(doc) and not doc.get("deleted"):
                doc["deleted"] = True
                doc["deleted_by"] = account_id
                changed = True
        if pseudonym:
            changed = _replace_id(doc, account_id, pseudonym) or changed
        return changed

    return transform
