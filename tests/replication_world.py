"""Two regions' databases for the replication tests: two real SecantusDB
servers on free loopback ports, a RegionReplicationService on the target's
database (real gRPC on 127.0.0.1), the owner's feed written through the real
stores, and a replicator built as the composition root would build it.

Ids carry their region so the injected owner and home decisions are
readable: a conversation ``eu-...`` is owned by eu, an account ``us:...`` is
homed in us."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Collection, Mapping
from datetime import UTC, datetime
from pathlib import Path

import bson
import grpc
from pymongo import AsyncMongoClient

from parley.message.v1 import replication_pb2_grpc as rgrpc
from parley_core.storage.mongo import DURABLE, Document
from parley_core.storage.mongo import Database as MongoDatabase
from parley_dev.layout import find_executable
from parley_dev.process import free_port
from svc_message.domain.replication import (
    ReplicaApplier,
    ReplicationPolicy,
    merge_member_document,
)
from svc_message.domain.replicator import Replicator, ReplicatorSettings
from svc_message.model import Change, ChangeKind, Conversation, Message, MessageSummary
from svc_message.model.conversations import Commit
from svc_message.model.replication import ReplicatedKind
from svc_message.peers.replication import ReplicationPeer
from svc_message.servicer.replication import RegionReplicationServicer
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.messages import MessageStore
from svc_message.storage.replica import ReplicaStore
from svc_message.storage.replication import (
    FeedTail,
    ReplicationCursorStore,
    ReplicationLeaseStore,
    SnapshotReader,
)

HOST = "127.0.0.1"
DB_NAME = "parley"
SOURCE, TARGET = "eu", "us"
# The test's stand-in for the deployment's service credential.
TOKEN = "replication-test-token"
DB_READY_SECONDS = 30.0


def owner_region(conversation_id: str) -> str:
    return conversation_id.split("-", 1)[0]


def home_region(account_id: str) -> str:
    return account_id.split(":", 1)[0]


def policy(
    *,
    replicate_to: Collection[str] = (TARGET,),
    pinned: Mapping[str, Collection[str]] | None = None,
) -> ReplicationPolicy:
    homes_only = dict(pinned or {})
    return ReplicationPolicy(
        region=SOURCE,
        replicate_to=frozenset(replicate_to),
        owner_region=owner_region,
        home_region=home_region,
        home_only_data=lambda region: tuple(homes_only.get(region, ())),
    )


@contextlib.asynccontextmanager
async def secantus(root: Path) -> AsyncIterator[tuple[str, AsyncMongoClient[Document]]]:
    """A SecantusDB of its own; stopped (by its PID) on exit."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "secantusd.toml").write_text("# defaults only\n")
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        find_executable("secantusd-py", "uv sync"),
        *("--config", str(root / "secantusd.toml"), "--host", HOST, "--port", str(port)),
        *("--storage-path", str(root / "data")),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    uri = f"mongodb://{HOST}:{port}/?retryWrites=false"
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        uri, retryWrites=False, tz_aware=True, serverSelectionTimeoutMS=500
    )
    try:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DB_READY_SECONDS
        while True:
            try:
                await client.admin.command("ping")
                break
            except Exception:
                if loop.time() > deadline:
                    raise
                await asyncio.sleep(0.2)
        yield uri, client
    finally:
        await client.close()
        with contextlib.suppress(ProcessLookupError):
            process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def database(client: AsyncMongoClient[Document]) -> MongoDatabase:
    return client.get_database(DB_NAME, write_concern=DURABLE)


async def ensure_indexes(client: AsyncMongoClient[Document]) -> None:
    db = database(client)
    await MessageStore(db).ensure_indexes()
    await ConversationStore(db).ensure_indexes()


@contextlib.asynccontextmanager
async def replica_server(
    client: AsyncMongoClient[Document],
) -> AsyncIterator[tuple[str, ReplicaApplier]]:
    """RegionReplicationService on the target database; its address."""
    applier = ReplicaApplier(ReplicaStore(database(client), merge_member=merge_member_document))
    server = grpc.aio.server()
    rgrpc.add_RegionReplicationServiceServicer_to_server(RegionReplicationServicer(applier), server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        yield f"{HOST}:{port}", applier
    finally:
        await server.stop(grace=None)


def replicator(
    client: AsyncMongoClient[Document],
    peer: ReplicationPeer,
    *,
    rules: ReplicationPolicy | None = None,
    instance_id: str = "",
    lease_seconds: float = 10.0,
) -> Replicator:
    db = database(client)
    return Replicator(
        peer=TARGET,
        instance_id=instance_id or uuid.uuid4().hex,
        policy=rules or policy(),
        feed=FeedTail(db),
        cursors=ReplicationCursorStore(db),
        leases=ReplicationLeaseStore(db),
        snapshots=SnapshotReader(db),
        client=peer,
        clock=lambda: datetime.now(UTC).timestamp(),
        settings=ReplicatorSettings(
            batch_changes=50, batch_seconds=0.1, lease_seconds=lease_seconds
        ),
    )


def peer_client(address: str) -> ReplicationPeer:
    return ReplicationPeer(source_region=SOURCE, address=address, bearer_token=TOKEN)


class Owner:
    """Writes a conversation's feed in the source database as svc_message does:
    the entries, then the head, then the senders' watermarks."""

    def __init__(self, client: AsyncMongoClient[Document]) -> None:
        db = database(client)
        self.messages = MessageStore(db)
        self.conversations = ConversationStore(db)
        self._next: dict[str, int] = {}

    async def open(self, conversation_id: str, members: tuple[str, ...]) -> None:
        now = datetime.now(UTC)
        await self.conversations.ensure(
            Conversation(
                conversation_id=conversation_id, type=1, member_ids=members, created_at=now
            )
        )
        self._next.setdefault(conversation_id, 1)

    async def send(self, conversation_id: str, sender: str, count: int) -> list[str]:
        """``count`` messages in one commit; their ids."""
        first = self._next[conversation_id]
        now = datetime.now(UTC)
        changes = []
        for n in range(first, first + count):
            message_id = uuid.uuid4().hex
            message = Message(
                message_id=message_id,
                conversation_id=conversation_id,
                seq=n,
                sender_account_id=sender,
                sender_device_id="d1",
                type=1,
                body=f"ciphertext {conversation_id} {n}".encode(),
                reply_to_message_id="",
                created_at=now,
                request_id=message_id,
                version=n,
            )
            changes.append(
                Change(
                    kind=ChangeKind.MESSAGE,
                    conversation_id=conversation_id,
                    version=n,
                    change_id=message_id,
                    account_id=sender,
                    created_at=now,
                    message=message,
                    request_id=message_id,
                )
            )
        outcome = await self.messages.insert_ordered(changes)
        assert outcome.inserted == count, outcome
        newest = changes[-1].message
        assert newest is not None
        await self.conversations.record_commits(
            [
                Commit(
                    conversation_id=conversation_id,
                    newest=MessageSummary(
                        message_id=newest.message_id,
                        seq=newest.seq,
                        sender_account_id=sender,
                        type=1,
                        created_at=now,
                    ),
                    sent={sender: newest.seq},
                    last_version=newest.seq,
                )
            ]
        )
        await self.conversations.raise_one(
            conversation_id, sender, delivered=newest.seq, read=newest.seq, now=now
        )
        self._next[conversation_id] = first + count
        return [c.change_id for c in changes]


async def held(client: AsyncMongoClient[Document], conversation_id: str) -> list[Document]:
    """The target's messages of a conversation, by seq."""
    cursor = database(client)["messages"].find({"conversation_id": conversation_id}).sort("seq", 1)
    return [doc async for doc in cursor]


async def wait_for_count(
    client: AsyncMongoClient[Document], conversation_id: str, count: int, *, timeout: float
) -> int:
    """Waits (bounded) until the target holds ``count`` messages of the
    conversation; how many it holds at the end."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    coll = database(client)["messages"]
    while True:
        n = await coll.count_documents({"conversation_id": conversation_id})
        if n >= count or loop.time() > deadline:
            return n
        await asyncio.sleep(0.1)


async def mentions(client: AsyncMongoClient[Document], needle: str) -> list[str]:
    """Collections of the target database holding any document that mentions
    ``needle`` (in any field, encoded as BSON)."""
    found = []
    db = database(client)
    for name in await db.list_collection_names():
        async for doc in db[name].find({}):
            if needle.encode() in bson.encode(doc):
                found.append(name)
                break
    return found


KINDS = tuple(k.value for k in ReplicatedKind)
