"""A replicator in a process of its own, for the SIGKILL test: tails the
source database and replicates to the peer address until killed.

Usage: python -m tests.replication_child SOURCE_URI PEER_ADDRESS INSTANCE_ID
"""

from __future__ import annotations

import asyncio
import sys

from pymongo import AsyncMongoClient

from parley_core.storage.mongo import Document
from tests.replication_world import peer_client, replicator

# Short, so that a restarted process takes over the killed one's lease soon.
LEASE_SECONDS = 2.0


async def main(source_uri: str, peer_address: str, instance_id: str) -> None:
    client: AsyncMongoClient[Document] = AsyncMongoClient(
        source_uri, retryWrites=False, tz_aware=True
    )
    peer = peer_client(peer_address)
    worker = replicator(client, peer, instance_id=instance_id, lease_seconds=LEASE_SECONDS)
    print("ready", flush=True)
    await worker.run(asyncio.Event())


if __name__ == "__main__":
    asyncio.run(main(*sys.argv[1:4]))
