"""MongoDB connections with the settings every service must use."""

from __future__ import annotations

from typing import Any

from pymongo import AsyncMongoClient, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase

from parley_core.config import MongoSettings

# An acknowledged write is on a majority of the replica set and in its journal,
# so it survives the loss of the primary or a kill -9 of the database.
DURABLE = WriteConcern(w="majority", j=True)

Document = dict[str, Any]
MongoClient = AsyncMongoClient[Document]
Database = AsyncDatabase[Document]


def connect(settings: MongoSettings, *, app_name: str) -> AsyncMongoClient[Document]:
    # retryWrites stays off whatever the URI says: services make their own writes
    # idempotent (unique request ids), and SecantusDB slows to a crawl with it on.
    return AsyncMongoClient(
        settings.uri,
        retryWrites=False,
        serverSelectionTimeoutMS=settings.server_selection_timeout_ms,
        appname=app_name,
        tz_aware=True,
    )


def durable_database(
    client: AsyncMongoClient[Document], settings: MongoSettings
) -> AsyncDatabase[Document]:
    return client.get_database(settings.database, write_concern=DURABLE)


async def ping(client: AsyncMongoClient[Document]) -> None:
    await client.admin.command("ping")
