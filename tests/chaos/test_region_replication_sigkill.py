"""A replicator in a child process SIGKILLed mid-stream while the owner keeps
sending (500 messages in commits of 10), then started again: the peer's
database ends with every message exactly once and none missing, and the
restarted process re-sent what the killed one had applied but not yet
recorded (seen as duplicates), never skipping anything."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from tests.replication_world import (
    SOURCE,
    TARGET,
    Owner,
    database,
    ensure_indexes,
    held,
    replica_server,
    secantus,
    wait_for_count,
)

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

TOTAL = 500
COMMIT = 10
KILL_AFTER = 125
WAIT_SECONDS = 60.0
ROUNDS = 2
# Between commits, so the owner keeps sending while the replicators run.
PACE_SECONDS = 0.2
_drains: list[asyncio.Task[bytes]] = []


async def start_child(source_uri: str, address: str, instance: str) -> asyncio.subprocess.Process:
    process = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "tests.replication_child", source_uri, address, instance),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), WAIT_SECONDS)
    assert line.decode().strip() == "ready"
    # Its logs go to stdout: keep reading so a full pipe never blocks it.
    _drains.append(asyncio.create_task(process.stdout.read()))
    return process


async def kill(process: asyncio.subprocess.Process) -> None:
    # Only the process this test started, by its own handle.
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGKILL)
    await process.wait()


@pytest_asyncio.fixture(loop_scope="session")
async def regions(tmp_path: Path) -> AsyncIterator[tuple[str, object, object, str, object]]:
    async with (
        secantus(tmp_path / SOURCE) as (source_uri, source),
        secantus(tmp_path / TARGET) as (_, target),
    ):
        await ensure_indexes(source)
        await ensure_indexes(target)
        async with replica_server(target) as (address, applier):
            yield source_uri, source, target, address, applier


async def test_sigkill_mid_stream_loses_and_duplicates_nothing(
    regions: tuple[str, object, object, str, object],
) -> None:
    source_uri, source, target, address, applier = regions
    owner = Owner(source)  # type: ignore[arg-type]
    cid = "eu-killed"
    await owner.open(cid, ("eu:amy", "us:ben"))
    sent = 0

    async def send_all() -> None:
        nonlocal sent
        while sent < TOTAL:
            await owner.send(cid, "eu:amy", COMMIT)
            sent += COMMIT
            await asyncio.sleep(PACE_SECONDS)

    cursors = database(source)["replication_cursors"]  # type: ignore[arg-type]
    sender: asyncio.Task[None] | None = None
    killed_at: list[int] = []
    children: list[asyncio.subprocess.Process] = []
    leases = database(source)["replication_leases"]  # type: ignore[arg-type]
    try:
        # All started before the owner sends (a start takes seconds on a
        # loaded machine): one holds the lease, the others wait for it and
        # take over when the lease of a killed one expires.
        for i in range(ROUNDS + 1):
            children.append(await start_child(source_uri, address, f"replicator-{i}"))
        # The holder snapshots the (empty) conversation and records a
        # position: from then on it tails the stream.
        for _ in range(int(WAIT_SECONDS * 10)):
            if await cursors.find_one({"_id": TARGET}) is not None:
                break
            await asyncio.sleep(0.1)
        sender = asyncio.create_task(send_all())
        for round_ in range(ROUNDS):
            bound = KILL_AFTER * (round_ + 1)
            reached = await wait_for_count(target, cid, bound, timeout=WAIT_SECONDS)  # type: ignore[arg-type]
            assert reached >= bound
            # Mid-stream: the owner is still sending.
            killed_at.append(sent)
            lease = await leases.find_one({"_id": TARGET})
            assert lease is not None
            holder = children[int(lease["owner"].rsplit("-", 1)[1])]
            await kill(holder)
            assert holder.returncode == -signal.SIGKILL
        await asyncio.wait_for(sender, WAIT_SECONDS)
        n = await wait_for_count(target, cid, TOTAL, timeout=WAIT_SECONDS)  # type: ignore[arg-type]
        # Let it read past the end too: nothing more may arrive.
        await asyncio.sleep(1.0)
        assert sent == TOTAL
        assert len(killed_at) == ROUNDS and all(k < TOTAL for k in killed_at), killed_at
    finally:
        for child in children:
            await kill(child)
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        for drain in _drains:
            with contextlib.suppress(Exception):
                await drain
        _drains.clear()
    assert n == TOTAL
    docs = await held(target, cid)  # type: ignore[arg-type]
    source_docs = await held(source, cid)  # type: ignore[arg-type]
    assert [d["seq"] for d in docs] == list(range(1, TOTAL + 1))
    assert docs == source_docs
    count = await database(target)["messages"].count_documents({"conversation_id": cid})  # type: ignore[arg-type]
    assert count == TOTAL
    head = await database(target)["conversations"].find_one({"_id": cid})  # type: ignore[arg-type]
    assert head is not None and head["last_seq"] == TOTAL
    counts = applier.counts[SOURCE]  # type: ignore[attr-defined]
    assert counts.applied > 0
    cursor = await cursors.find_one({"_id": TARGET})
    assert cursor is not None and cursor["backlog"] == 0
