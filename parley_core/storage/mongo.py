"""MongoDB connections with the settings every service must use."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
)

from parley_core.config import MongoSettings

# An acknowledged write is on a majority of the replica set and in its journal,
# so it survives the loss of the primary or a kill -9 of the database.
DURABLE = WriteConcern(w="majority", j=True)
# For writes that are hints a client repeats anyway (delivered watermarks
# from stream acks, device positions): acknowledged by the primary before its
# journal flush. A crash of the database may lose the last of them; the next
# ack or resume writes them again. Never for anything a client was promised.
HINT = WriteConcern(w=1, j=False)

Document = dict[str, Any]
MongoClient = AsyncMongoClient[Document]
Database = AsyncDatabase[Document]

# Write command -> the array holding the documents it carries (None: always one).
WRITE_OPS: dict[str, str | None] = {
    "insert": "documents",
    "update": "updates",
    "delete": "deletes",
    "findAndModify": None,
}


class WriteCounter(CommandListener):
    """Counts write commands and the documents they carry, per collection and op.

    Fan-out cost is then measured, not claimed: a message to a 1024-member
    group must add as many documents as one to a 3-member group. pymongo calls
    this for every command, reads included, so a non-write returns after one
    dict lookup and a write only bumps two ints (no allocation once a
    collection has been seen). Commands are counted when sent, failed or not.
    """

    def __init__(self) -> None:
        # op -> collection -> [commands, documents]
        self._counts: dict[str, dict[str, list[int]]] = {op: {} for op in WRITE_OPS}

    def started(self, event: CommandStartedEvent) -> None:
        op = event.command_name
        by_collection = self._counts.get(op)
        if by_collection is None:
            return
        command = event.command
        collection = command.get(op)
        if not isinstance(collection, str):
            return
        slot = by_collection.get(collection)
        if slot is None:
            slot = by_collection[collection] = [0, 0]
        field = WRITE_OPS[op]
        slot[0] += 1
        slot[1] += 1 if field is None else len(command.get(field) or ())

    def succeeded(self, event: CommandSucceededEvent) -> None:
        return None

    def failed(self, event: CommandFailedEvent) -> None:
        return None

    def counts(self) -> Iterator[tuple[str, str, int, int]]:
        """(collection, op, commands, documents) for every pair seen so far."""
        for op, by_collection in self._counts.items():
            # A copy: a scrape may run while the loop adds a collection.
            for collection, (commands, documents) in list(by_collection.items()):
                yield collection, op, commands, documents


def connect(
    settings: MongoSettings,
    *,
    app_name: str,
    listeners: Sequence[CommandListener] = (),
) -> AsyncMongoClient[Document]:
    # retryWrites stays off whatever the URI says: services make their own writes
    # idempotent (unique request ids), and SecantusDB slows to a crawl with it on.
    return AsyncMongoClient(
        settings.uri,
        retryWrites=False,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
        appname=app_name,
        tz_aware=True,
        event_listeners=list(listeners),
    )


def durable_database(
    client: AsyncMongoClient[Document], settings: MongoSettings
) -> AsyncDatabase[Document]:
    return client.get_database(settings.database, write_concern=DURABLE)


async def ping(client: AsyncMongoClient[Document]) -> None:
    await client.admin.command("ping")
