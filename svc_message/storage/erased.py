"""What an account erasure leaves of a stored feed document, applied by a
replica to copies that reach it after it erased the account itself (a
partition: the owner region replicates before its own erasure step ran).

The result matches what the owner's erasure writes (storage/erasure.py), so
the owner's own erased copy, when it comes, changes nothing that matters;
messages rewritten here are flagged ``erased`` and so rank as the erasure's
copy (storage/replication.py). ``erased_accounts`` names the accounts by the
SHA-256 of their id, never the id, and expires after the tombstone window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from typing import Any

from bson import Binary

from parley_core.storage.mongo import Document
from svc_message.model import ERASED, HISTORY_KINDS, ChangeKind

# Set by an account erasure on every message it rewrote.
ERASED_FLAG = "erased"
ERASED_ACCOUNTS = "erased_accounts"


def account_key(account_id: str) -> str:
    return hashlib.sha256(account_id.encode()).hexdigest()


def accounts_named(kind: str, doc: Mapping[str, Any]) -> set[str]:
    """Every account id a feed document names (``kind``: its collection)."""
    if kind == "members":
        return {str(doc.get("account_id"))}
    if kind == "inbox_settings":
        account = doc.get("account_id") or (doc.get("crdt") or {}).get("account_id")
        return {str(account)} if account else set()
    if kind == "conversations":
        return {str(a) for a in doc.get("member_ids") or ()} | set(doc.get("sent") or {})
    system = doc.get("system") or {}
    named = {doc.get("sender_id"), doc.get("deleted_by"), system.get("actor")}
    named.update(system.get("targets") or ())
    named.update(doc.get("hidden_for") or ())
    for accounts in (doc.get("reactions") or {}).values():
        named.update(accounts)
    return {str(a) for a in named if a}


def _replace(ids: Iterable[Any], erased: Collection[str]) -> list[Any]:
    return [ERASED if i in erased else i for i in ids]


def scrub_message(doc: Mapping[str, Any], erased: Collection[str]) -> Document:
    """The message as the erasure of ``erased`` leaves it (unchanged when it
    names none of them)."""
    if not erased or not (accounts_named("messages", doc) & set(erased)):
        return dict(doc)
    out: Document = dict(doc)
    if doc.get("sender_id") in erased:
        out.update(sender_id=ERASED, request_id=doc["_id"])
        out.pop("sender_device_id", None)
        out.pop("only_for", None)
        kind = doc.get("kind", ChangeKind.MESSAGE)
        if kind == ChangeKind.MESSAGE:
            out.update(deleted=True, body=Binary(b""), deleted_by=ERASED)
            out.pop("media", None)
        elif kind in HISTORY_KINDS:
            out["system"] = {k: v for k, v in (doc.get("system") or {}).items() if k != "device"}
        else:
            out.pop("body", None)
    if out.get("system"):
        system = dict(out["system"])
        if system.get("actor") in erased:
            system["actor"] = ERASED
        if system.get("targets"):
            system["targets"] = _replace(system["targets"], erased)
        out["system"] = system
    if doc.get("deleted_by") in erased:
        out["deleted_by"] = ERASED
    if "hidden_for" in doc:
        out["hidden_for"] = [a for a in doc["hidden_for"] or () if a not in erased]
    if doc.get("reactions"):
        out["reactions"] = {
            emoji: [a for a in accounts if a not in erased]
            for emoji, accounts in doc["reactions"].items()
        }
    out[ERASED_FLAG] = True
    return out


def scrub_head(doc: Mapping[str, Any], erased: Collection[str]) -> Document:
    """The conversation head as the erasure leaves it in a region that holds
    no departure of its own (an erased member stays as the ERASED marker, as
    the peer of a direct conversation does; the owner's head replaces it)."""
    members = list(doc.get("member_ids") or ())
    if not erased or not (set(members) | set(doc.get("sent") or {})) & set(erased):
        return dict(doc)
    out: Document = dict(doc)
    out["member_ids"] = _replace(members, erased)
    for field in ("sent", "roles"):
        if isinstance(doc.get(field), Mapping):
            out[field] = {k: v for k, v in doc[field].items() if k not in erased}
    joined = doc.get("joined")
    if isinstance(joined, Mapping):
        kept = {k: v for k, v in joined.items() if k not in erased}
        for account in erased:
            if account in joined and account in members:
                kept[ERASED] = joined[account]
        out["joined"] = kept
    last = doc.get("last_message")
    if isinstance(last, Mapping) and last.get("sender") in erased:
        out["last_message"] = {**last, "sender": ERASED}
    return out
