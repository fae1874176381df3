"""The region's revocations and the outbox of the push to peer regions on a
real SecantusDB: a revocation made here is owed to the peers named (counted
for a set of devices, as an erasure asks), struck peer by peer once
acknowledged but owed again when revoked anew meanwhile; a peer's
revocations are recorded as received (owed to no one), found by the poll
however old they are, and never lower a newer one; a peer seen for the first
time is owed every live revocation made here, once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley_core.auth.revocations import Revocation
from parley_core.storage.mongo import Document
from parley_core.storage.revocations import CHANNEL, RevocationStore
from tests.replication_world import secantus

pytestmark = pytest.mark.slow

TTL = 3600


class Announcements:
    """The store's Redis, as far as it is used: what was published."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, float]] = []

    async def publish(self, channel: str, message: str) -> int:
        assert channel == CHANNEL
        data = json.loads(message)
        self.heard.append((data["d"], data["t"]))
        return 1


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def mongo(
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[AsyncMongoClient[Document]]:
    root: Path = tmp_path_factory.mktemp("revocations")
    async with secantus(root) as (_, client):
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def store(mongo: AsyncMongoClient[Document]) -> tuple[RevocationStore, Announcements, Any]:
    await mongo.drop_database("parley")
    announcements = Announcements()
    revocations = RevocationStore(
        mongo["parley"],
        announcements,  # type: ignore[arg-type]
        token_ttl_seconds=TTL,
    )
    await revocations.ensure_indexes()
    return revocations, announcements, mongo["parley"]["revocations"]


async def test_a_revocation_is_owed_to_each_peer_until_it_acknowledges(
    store: tuple[RevocationStore, Announcements, Any],
) -> None:
    revocations, announcements, docs = store
    now = time.time()
    await revocations.revoke_device("d1", now=now, peers=["us", "ap"])
    await revocations.revoke_device("d2", now=now + 1, peers=["us", "ap"])
    assert [d for d, _ in announcements.heard] == ["d1", "d2"]
    assert [r.device_id for r in await revocations.unsent("us", limit=10)] == ["d1", "d2"]
    assert [r.device_id for r in await revocations.unsent("us", limit=1)] == ["d1"]
    assert await revocations.backlog("ap") == 2

    # What an erasure's revocations@<peer> step asks, of its account's devices.
    assert await revocations.unacknowledged("us", ["d1", "d2", "d-other"]) == 2
    assert await revocations.unacknowledged("us", []) == 0

    await revocations.mark_sent("us", await revocations.unsent("us", limit=10))
    assert await revocations.unsent("us", limit=10) == []
    assert await revocations.backlog("ap") == 2
    assert await revocations.unacknowledged("us", ["d1", "d2"]) == 0
    assert await revocations.unacknowledged("ap", ["d1"]) == 1
    await revocations.mark_sent("ap", await revocations.unsent("ap", limit=10))
    doc = await docs.find_one({"_id": "d1"})
    assert doc["unsent"] == [] and "source" not in doc
    assert doc["expire_at"] - doc["revoked_at"] == timedelta(seconds=TTL)


async def test_a_device_revoked_again_meanwhile_stays_owed(
    store: tuple[RevocationStore, Announcements, Any],
) -> None:
    revocations, _, _ = store
    now = time.time()
    await revocations.revoke_device("d1", now=now, peers=["us"])
    batch = await revocations.unsent("us", limit=10)
    await revocations.revoke_device("d1", now=now + 2, peers=["us"])
    await revocations.mark_sent("us", batch)
    [owed] = await revocations.unsent("us", limit=10)
    assert owed.device_id == "d1" and owed.revoked_at == pytest.approx(now + 2, abs=0.002)
    await revocations.mark_sent("us", [owed])
    assert await revocations.backlog("us") == 0


async def test_a_peers_revocation_is_received_found_by_the_poll_and_never_lowered(
    store: tuple[RevocationStore, Announcements, Any],
) -> None:
    revocations, announcements, docs = store
    now = time.time()
    # Made in eu 10 minutes ago, held up by a partition, arriving now.
    made = now - 600
    await revocations.apply_from_peer([Revocation("d7", made)], source="eu", now=now)
    assert announcements.heard == [("d7", made)]
    doc = await docs.find_one({"_id": "d7"})
    assert doc["source"] == "eu" and "unsent" not in doc
    assert doc["expire_at"] - doc["revoked_at"] == timedelta(seconds=TTL)
    # A poll that last ran a moment ago finds it although it was made long before.
    recent = await revocations.load_since(datetime.fromtimestamp(now - 5, UTC))
    assert [r.device_id for r in recent] == ["d7"]

    # Sent twice, and an older one after it: the newest stays.
    await revocations.apply_from_peer([Revocation("d7", made)], source="eu", now=now + 1)
    await revocations.apply_from_peer([Revocation("d7", made - 60)], source="eu", now=now + 2)
    [held] = await revocations.load_since(None)
    assert held.revoked_at == pytest.approx(made, abs=0.002)
    assert await revocations.backlog("eu") == 0


async def test_a_new_peer_is_owed_every_live_revocation_made_here_once(
    store: tuple[RevocationStore, Announcements, Any],
) -> None:
    revocations, _, _ = store
    now = time.time()
    await revocations.revoke_device("mine", now=now, peers=[])
    await revocations.apply_from_peer([Revocation("theirs", now)], source="eu", now=now)
    assert await revocations.add_peer("ap", now=now) is True
    assert [r.device_id for r in await revocations.unsent("ap", limit=10)] == ["mine"]
    await revocations.mark_sent("ap", await revocations.unsent("ap", limit=10))
    assert await revocations.add_peer("ap", now=now) is False
    assert await revocations.backlog("ap") == 0
