"""Encrypted SDK clients against a real stack, and their delivery streams drained
into lists, for the SDK's end-to-end encryption integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from parley_dev.stack import LocalStack
from parley_sdk import Client, MessageEvent, StreamEvent, SyncCompleteEvent
from tests.helpers import wait_until

WAIT = 30.0


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def connect(stack: LocalStack, store: Path, **kwargs: Any) -> Client:
    return await Client.connect(
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
        presence_target=stack.presence_target,
        store=store,
        **kwargs,
    )


async def new_user(stack: LocalStack, store: Path, prefix: str) -> Client:
    return await connect(stack, store, handle=unique(prefix), device_name=f"{prefix}-1")


async def link_device(stack: LocalStack, owner: Client, store: Path, name: str) -> Client:
    registered = await owner.register_device(name=name)
    return await connect(stack, store, credentials=registered.credentials)


@dataclass
class Inbox:
    """A device's decrypting delivery stream drained into a list."""

    client: Client
    events: list[StreamEvent] = field(default_factory=list)

    def messages(self, conversation_id: str) -> list[MessageEvent]:
        return [
            e
            for e in self.events
            if isinstance(e, MessageEvent) and e.conversation_id == conversation_id
        ]

    def texts(self, conversation_id: str) -> list[str | None]:
        return [e.text for e in self.messages(conversation_id)]

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    async def wait_for(self, what: str, condition: Callable[[], bool]) -> None:
        async def check() -> bool:
            return condition()

        await wait_until(check, timeout=WAIT, what=what)

    async def wait_texts(self, conversation_id: str, expected: list[str]) -> None:
        await self.wait_for(
            f"{expected!r} in {conversation_id}",
            lambda: all(t in self.texts(conversation_id) for t in expected),
        )


@contextlib.asynccontextmanager
async def listening(client: Client) -> AsyncIterator[Inbox]:
    """The client's delivery stream, drained by a task, once it has synced."""
    inbox = Inbox(client)
    stream = client.events()

    async def drain() -> None:
        async for event in stream:
            inbox.events.append(event)

    task = asyncio.create_task(drain())
    try:
        await inbox.wait_for(
            "the stream to sync", lambda: bool(inbox.of(SyncCompleteEvent)) or task.done()
        )
        if task.done():
            task.result()
        yield inbox
    finally:
        await stream.close()
        await asyncio.wait_for(task, 10)
