"""The history archive's Parquet format, version 1.

One row per change-feed entry, exactly the fields a ``messages`` document
has (bodies stay ciphertext, as in MongoDB), so a row turns back into the
document it was and the log's own decoders read it. Each (conversation, ISO
week, first version) chunk is one row group; a bundle object holds the
chunks of several quiet conversations. The file's key-value metadata names
``schema_version``; readers refuse a version they do not know rather than
guess.

Writing is deterministic: the same rows give the same bytes (no timestamps,
fixed writer options), so an archiver rerun after a crash writes the same
object under the same key.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

SCHEMA_VERSION = "1"

_SYSTEM = pa.struct(
    [
        ("action", pa.int32()),
        ("actor", pa.string()),
        ("targets", pa.list_(pa.string())),
        ("role", pa.int32()),
        ("title", pa.string()),
        ("avatar", pa.string()),
        ("device", pa.string()),
        ("search", pa.bool_()),
    ]
)
_REACTION = pa.struct([("emoji_hex", pa.string()), ("accounts", pa.list_(pa.string()))])
_TIME = pa.timestamp("ms", tz="UTC")

SCHEMA = pa.schema(
    [
        ("conversation_id", pa.string()),
        ("week", pa.string()),
        ("id", pa.string()),
        ("version", pa.int64()),
        ("kind", pa.string()),
        ("sender_id", pa.string()),
        ("created_at", _TIME),
        ("request_id", pa.string()),
        # History items (kind message or system).
        ("seq", pa.int64()),
        ("sender_device_id", pa.string()),
        ("type", pa.int32()),
        ("body", pa.binary()),
        ("reply_to", pa.string()),
        ("forwarded", pa.bool_()),
        ("state_version", pa.int64()),
        ("edit_version", pa.int64()),
        ("edited_at", _TIME),
        ("deleted", pa.bool_()),
        ("deleted_by", pa.string()),
        ("hidden_for", pa.list_(pa.string())),
        ("media", pa.list_(pa.string())),
        ("reactions", pa.list_(_REACTION)),
        ("system", _SYSTEM),
        # Other entries: the message they change and how.
        ("target", pa.string()),
        ("target_seq", pa.int64()),
        ("emoji", pa.string()),
        ("removed", pa.bool_()),
        ("for_everyone", pa.bool_()),
        ("only_for", pa.string()),
    ],
    metadata={"schema_version": SCHEMA_VERSION, "format": "parley.history"},
)

_OPTIONAL_STRINGS = (
    "request_id",
    "sender_device_id",
    "reply_to",
    "deleted_by",
    "target",
    "emoji",
    "only_for",
)


class UnknownSchema(Exception):
    """An archive object written by a format this code does not know."""


@dataclass(frozen=True, slots=True)
class Chunk:
    """The entries of one (conversation, week) moved together, oldest first."""

    conversation_id: str
    week: str
    docs: Sequence[Mapping[str, Any]]

    @property
    def first_version(self) -> int:
        return int(self.docs[0]["version"])

    @property
    def chunk_id(self) -> str:
        return f"{self.conversation_id}/{self.week}/{self.first_version}"


@dataclass(frozen=True, slots=True)
class Encoded:
    data: bytes
    sha256: str
    # Per chunk, in the order given: (row group index, rows).
    row_groups: tuple[tuple[int, int], ...]


def iso_week(at: datetime) -> str:
    year, week, _ = at.astimezone(UTC).isocalendar()
    return f"{year}-W{week:02d}"


def _aware(at: datetime | None) -> datetime | None:
    if at is None:
        return None
    return at if at.tzinfo is not None else at.replace(tzinfo=UTC)


def _row(doc: Mapping[str, Any], week: str) -> dict[str, Any]:
    system = doc.get("system")
    reactions = doc.get("reactions") or {}
    row: dict[str, Any] = {
        "conversation_id": doc["conversation_id"],
        "week": week,
        "id": doc["_id"],
        "version": int(doc.get("version", 0)),
        "kind": doc.get("kind", "message"),
        "sender_id": doc["sender_id"],
        "created_at": _aware(doc["created_at"]),
        "seq": doc.get("seq"),
        "type": doc.get("type"),
        "body": bytes(doc["body"]) if doc.get("body") is not None else None,
        "forwarded": doc.get("forwarded"),
        "state_version": doc.get("state_version"),
        "edit_version": doc.get("edit_version"),
        "edited_at": _aware(doc.get("edited_at")),
        "deleted": doc.get("deleted"),
        "hidden_for": list(doc["hidden_for"]) if "hidden_for" in doc else None,
        "media": list(doc["media"]) if "media" in doc else None,
        # Keys sorted: a document's field order must not change the bytes.
        "reactions": [
            {"emoji_hex": key, "accounts": list(accounts)}
            for key, accounts in sorted(reactions.items())
        ]
        if "reactions" in doc
        else None,
        "system": None
        if system is None
        else {
            "action": system.get("action", 0),
            "actor": system.get("actor", ""),
            "targets": list(system.get("targets") or ()),
            "role": system.get("role", 0),
            "title": system.get("title", ""),
            "avatar": system.get("avatar", ""),
            "device": system.get("device"),
            "search": system.get("search"),
        },
        "target_seq": doc.get("target_seq"),
        "removed": doc.get("removed"),
        "for_everyone": doc.get("for_everyone"),
    }
    for name in _OPTIONAL_STRINGS:
        row[name] = doc.get(name)
    return row


def doc_from_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``messages`` document a row was (fields it lacked stay absent)."""
    doc: dict[str, Any] = {
        "_id": row["id"],
        "conversation_id": row["conversation_id"],
        "version": row["version"],
        "kind": row["kind"],
        "sender_id": row["sender_id"],
        "created_at": row["created_at"],
    }
    for name, value in row.items():
        if name in doc or name in ("id", "week") or value is None:
            continue
        if name == "reactions":
            doc[name] = {item["emoji_hex"]: list(item["accounts"]) for item in value}
        elif name == "system":
            doc[name] = {k: v for k, v in value.items() if v is not None}
        else:
            doc[name] = value
    return doc


def encode(chunks: Sequence[Chunk]) -> Encoded:
    """One Parquet object holding each chunk as its own row group."""
    sink = io.BytesIO()
    groups: list[tuple[int, int]] = []
    with pq.ParquetWriter(
        sink,
        SCHEMA,
        # Ciphertext does not compress; stored plain, a body can be found in
        # the object's bytes (an erasure check scans for them).
        compression={name: ("none" if name == "body" else "zstd") for name in SCHEMA.names},
        use_dictionary=[name for name in SCHEMA.names if name != "body"],
        write_statistics=True,
        store_schema=True,
    ) as writer:
        for chunk in chunks:
            table = pa.Table.from_pylist([_row(d, chunk.week) for d in chunk.docs], schema=SCHEMA)
            writer.write_table(table, row_group_size=max(len(chunk.docs), 1))
            groups.append((len(groups), len(chunk.docs)))
    data = sink.getvalue()
    return Encoded(data=data, sha256=hashlib.sha256(data).hexdigest(), row_groups=tuple(groups))


def _open(data: bytes) -> pq.ParquetFile:
    parquet = pq.ParquetFile(io.BytesIO(data))
    # The file's own key-value metadata, which every Parquet reader sees.
    metadata = parquet.metadata.metadata or {}
    version = metadata.get(b"schema_version", b"").decode()
    if version != SCHEMA_VERSION:
        raise UnknownSchema(f"history archive schema_version {version!r} is not known")
    return parquet


def row_group_sizes(data: bytes) -> list[int]:
    parquet = _open(data)
    return [parquet.metadata.row_group(i).num_rows for i in range(parquet.num_row_groups)]


def read_row_group(data: bytes, index: int) -> list[dict[str, Any]]:
    """The documents of one row group, oldest first."""
    table = _open(data).read_row_group(index)
    return [doc_from_row(row) for row in table.to_pylist()]
