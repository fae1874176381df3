"""The history archive tests' world: SecantusDB and SeaweedFS of a backends-only
stack, a database and key prefix per test, a log written straight through
MessageStore with creation times in the past, and an injected clock."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from parley_core.config import S3Settings
from parley_core.ids import new_id
from parley_core.storage import mongo as mongo_storage
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from svc_message.archive_wiring import build_archive
from svc_message.domain.archiver import Archiver
from svc_message.model import Change, ChangeKind, Message
from svc_message.storage.archive import ArchiveObjects
from svc_message.storage.tiered import TieredMessageStore

DAY = 86400.0
# "Now" of every test: a Wednesday, so weeks split the days predictably.
NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC).timestamp()
WINDOW_DAYS = 30


@dataclass
class World:
    stack: LocalStack
    db: Any
    store: TieredMessageStore
    archiver: Archiver
    objects: ArchiveObjects
    prefix: str
    clock: list[float]

    def s3(self) -> Any:
        return s3_client(self.stack.s3_endpoint, self.stack.s3_keys)

    def object_keys(self) -> list[str]:
        reply = self.s3().list_objects_v2(Bucket=self.stack.s3_bucket, Prefix=self.prefix)
        return sorted(item["Key"] for item in reply.get("Contents", ()))

    def object_bytes(self, key: str) -> bytes:
        body = self.s3().get_object(Bucket=self.stack.s3_bucket, Key=key)["Body"]
        return bytes(body.read())


async def open_world(
    stack: LocalStack,
    client: Any,
    *,
    on_step: Callable[[str], Awaitable[None]] | None = None,
    target_object_bytes: int = 1 << 20,
    name: str | None = None,
    stack_database: bool = False,
    s3: S3Settings | None = None,
    archive: dict[str, Any] | None = None,
) -> World:
    """A world of its own database and key prefix; ``stack_database``: the
    stack's database, which its config file (and so the CLI) names; ``s3``:
    another object store (moto, for the glacier tier); ``archive``: more
    archive settings."""
    name = name or uuid.uuid4().hex[:12]
    prefix = f"history-test/{name}/"
    settings = stack.settings.model_copy(
        update={
            "archive": stack.settings.archive.model_copy(
                update={
                    "hot_window_days": WINDOW_DAYS,
                    "prefix": prefix,
                    "target_object_bytes": target_object_bytes,
                    "messages_per_second": 0,
                    **(archive or {}),
                }
            ),
            "s3": s3 or stack.settings.s3,
        }
    )
    database = stack.settings.mongo.database if stack_database else f"archive_{name}"
    db = mongo_storage.durable_database(
        client, stack.settings.mongo.model_copy(update={"database": database})
    )
    clock = [NOW]
    store, archiver, objects = await build_archive(settings, db, clock=lambda: clock[0])
    if on_step is not None:
        archiver._on_step = on_step
    return World(stack, db, store, archiver, objects, prefix, clock)


def at(days_ago: float) -> datetime:
    return datetime.fromtimestamp(NOW - days_ago * DAY, UTC)


def _id_at(when: datetime) -> str:
    return new_id(int(when.timestamp() * 1000))


async def write_history(
    store: TieredMessageStore,
    conversation_id: str,
    times: Sequence[datetime],
    *,
    senders: Sequence[str] = ("alice", "bob"),
    media: dict[int, tuple[str, ...]] | None = None,
) -> list[Change]:
    """One message per time (oldest first), seq and version from 1."""
    changes = []
    for i, when in enumerate(times, start=1):
        message_id = _id_at(when)
        sender = senders[i % len(senders)]
        changes.append(
            Change(
                kind=ChangeKind.MESSAGE,
                conversation_id=conversation_id,
                version=i,
                change_id=message_id,
                account_id=sender,
                created_at=when,
                request_id=f"r{i}",
                message=Message(
                    message_id=message_id,
                    conversation_id=conversation_id,
                    seq=i,
                    sender_account_id=sender,
                    sender_device_id="d1",
                    type=1,
                    body=f"ciphertext {conversation_id} #{i}".encode() * 4,
                    reply_to_message_id="",
                    created_at=when,
                    request_id=f"r{i}",
                    version=i,
                    media_ids=(media or {}).get(i, ()),
                ),
            )
        )
    outcome = await store.insert_ordered(changes)
    assert outcome.inserted == len(changes)
    return changes


async def write_change(
    store: TieredMessageStore,
    target: Message,
    *,
    kind: str,
    version: int,
    account_id: str,
    when: datetime,
    **fields: Any,
) -> Change:
    """A change committed as the send pipeline does: the feed entry, then
    its mutation of the target (which matches nothing once archived)."""
    change = Change(
        kind=kind,
        conversation_id=target.conversation_id,
        version=version,
        change_id=_id_at(when),
        account_id=account_id,
        created_at=when,
        target_id=target.message_id,
        target_seq=target.seq,
        request_id=f"c{version}",
        **fields,
    )
    assert (await store.insert_ordered([change])).inserted == 1
    await store.apply([change])
    return change


def days_spread(count: int, *, first_days_ago: float, last_days_ago: float) -> list[datetime]:
    step = (first_days_ago - last_days_ago) / max(count - 1, 1)
    return (
        [at(first_days_ago - i * step) for i in range(count)] if count > 1 else [at(last_days_ago)]
    )


def seqs(items: Sequence[Message]) -> list[int]:
    return [m.seq for m in items]


def within(days: float) -> timedelta:
    return timedelta(days=days)
