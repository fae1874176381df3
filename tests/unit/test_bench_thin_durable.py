"""The thin durable service's group commit, with a fake collection (pure logic;
tests/integration/test_bench.py runs the server against SecantusDB)."""

from __future__ import annotations

import asyncio
from typing import Any

from parley_dev.bench.thin_durable import GroupCommit

# -- the thin durable service's group commit -------------------------------------------


class _Collection:
    """Records each insert_many; each takes one event-loop turn, as a round trip would."""

    def __init__(self, fail_first: bool = False) -> None:
        self.batches: list[list[dict[str, Any]]] = []
        self.fail_first = fail_first

    async def insert_many(self, documents: list[dict[str, Any]], *, ordered: bool) -> None:
        assert ordered
        await asyncio.sleep(0)
        if self.fail_first:
            self.fail_first = False
            raise RuntimeError("write failed")
        self.batches.append(documents)


async def test_group_commit_batches_what_queued_while_a_write_was_in_flight() -> None:
    collection = _Collection()
    commit = GroupCommit(collection, batch_max=3)
    committer = asyncio.create_task(commit.run())
    try:
        await commit.submit({"n": 0})
        await asyncio.gather(*(commit.submit({"n": n}) for n in range(1, 6)))
    finally:
        committer.cancel()
    assert [[d["n"] for d in batch] for batch in collection.batches] == [[0], [1, 2, 3], [4, 5]]
    assert commit.stats() == {"batches": 3, "documents": 6}


async def test_group_commit_fails_every_caller_of_a_failed_batch_and_goes_on() -> None:
    collection = _Collection(fail_first=True)
    commit = GroupCommit(collection)
    committer = asyncio.create_task(commit.run())
    try:
        results = await asyncio.gather(
            *(commit.submit({"n": n}) for n in range(2)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)
        await commit.submit({"n": 2})
    finally:
        committer.cancel()
    assert collection.batches == [[{"n": 2}]] and commit.stats()["batches"] == 1
