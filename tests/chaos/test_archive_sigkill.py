"""A real archiver process (``python -m svc_message archive run``) SIGKILLed
after each step of a move (write -> read back and verify -> manifest ->
heads -> delete from MongoDB), then run again: the objects are the ones the
killed run wrote, every object is named by the manifest, every log entry is
in exactly one tier, and ListMessages serves the same history before and
after, both directions. The in-process crash tests (an exception at a step)
are in tests/integration/test_history_archive.py; this one kills a process."""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import os
import signal
import sys
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
import pytest_asyncio
import yaml
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc
from parley_dev.layout import deep_merge
from parley_dev.seaweed import s3_client
from parley_dev.stack import LocalStack
from svc_message.domain.archiver import STEPS
from tests.helpers import TEST_LIMITS, channel
from tests.users import Device, all_messages, direct, send, sign_up

pytestmark = [pytest.mark.chaos, pytest.mark.slow]

SENT = 24
# The archiver's window: seconds, so that ids (UUIDv7 of the sends) leave it
# while the test waits; weeks still come from the rewritten creation times.
WINDOW_SECONDS = 2.0
# Short, so that the rerun takes over the killed process's lease soon.
LEASE_SECONDS = 1.0
HOLD_TIMEOUT_SECONDS = 60.0
RUN_TIMEOUT_SECONDS = 90.0


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    local = LocalStack.with_free_ports(
        root=tmp_path_factory.mktemp("archive_kill") / "stack",
        shutdown_grace_seconds=2,
        extra_config={
            **TEST_LIMITS,
            # The log answers ListMessages, not the recent cache.
            "message": {"recent_cache_messages": 0},
            # Only the killed and rerun processes archive.
            "archive": {"enabled": False},
        },
    )
    try:
        await local.start()
        yield local
    finally:
        await local.stop()


def archiver_config(stack: LocalStack, path: Path) -> Path:
    """The stack's config, with a window of seconds, small objects (several
    moves per pass) and a short lease, for the archiver processes."""
    tree = yaml.safe_load(stack.config_path.read_text())
    tree = deep_merge(
        tree,
        {
            "archive": {
                "hot_window_days": WINDOW_SECONDS / 86400,
                "target_object_bytes": 1024,
                "messages_per_second": 0,
                "lease_seconds": LEASE_SECONDS,
            }
        },
    )
    path.write_text(yaml.safe_dump(tree))
    return path


async def start_archiver(config: Path, *args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "svc_message", "archive", "run", "--config", str(config)),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("PARLEY_")},
    )


async def kill_at(config: Path, step: str) -> None:
    """Run the archiver until it says it holds after ``step``, then SIGKILL it."""
    process = await start_archiver(config, "--hold-at", step)
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), HOLD_TIMEOUT_SECONDS)
        assert line.decode().strip() == f"held at {step}", (
            line,
            (await process.stderr.read()).decode()[-2000:] if process.stderr else "",
        )
    finally:
        # Only the process this test started, by its own handle.
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()
    assert process.returncode == -signal.SIGKILL


async def run_archiver(config: Path) -> str:
    process = await start_archiver(config)
    try:
        out, err = await asyncio.wait_for(process.communicate(), RUN_TIMEOUT_SECONDS)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGKILL)
        await process.wait()
        raise
    assert process.returncode == 0, err.decode()[-2000:]
    return out.decode()


def history(items: list[mpb.Message]) -> list[tuple[str, int, bytes]]:
    return [(m.message_id, m.seq, m.body) for m in items]


async def backward(
    messages: messages_pb2_grpc.MessageServiceAsyncStub, device: Device, conversation: str
) -> list[mpb.Message]:
    found: list[mpb.Message] = []
    token = ""
    for _ in range(SENT + 5):
        page = await messages.ListMessages(
            mpb.ListMessagesRequest(
                conversation_id=conversation,
                page_size=5,
                page_token=token,
                direction=mpb.DIRECTION_BACKWARD,
            ),
            metadata=device.md,
        )
        found += page.messages
        token = page.next_page_token
        if not token:
            return found
    raise AssertionError("history did not end")


class Bucket:
    def __init__(self, stack: LocalStack, prefix: str) -> None:
        self._s3: Any = s3_client(stack.s3_endpoint, stack.s3_keys)
        self._bucket = stack.s3_bucket
        self._prefix = prefix

    def keys(self) -> set[str]:
        reply = self._s3.list_objects_v2(Bucket=self._bucket, Prefix=self._prefix)
        return {item["Key"] for item in reply.get("Contents", ())}

    def rows(self, key: str) -> list[dict[str, Any]]:
        data = self._s3.get_object(Bucket=self._bucket, Key=key)["Body"].read()
        return list(pq.read_table(io.BytesIO(data)).to_pylist())


@pytest.mark.parametrize("step", STEPS)
async def test_sigkill_at_a_step_then_a_rerun_gives_the_same_objects(
    stack: LocalStack, tmp_path: Path, step: str
) -> None:
    config = archiver_config(stack, tmp_path / "archiver.yaml")
    mongo: AsyncMongoClient[Any] = AsyncMongoClient(
        stack.mongo_uri, retryWrites=False, tz_aware=True
    )
    db = mongo[stack.settings.mongo.database]
    bucket = Bucket(stack, stack.settings.archive.prefix)
    try:
        async with channel(stack.keys_target) as kc, channel(stack.message_targets[0]) as mc:
            keys = accounts_pb2_grpc.AccountServiceStub(kc)
            messages = messages_pb2_grpc.MessageServiceStub(mc)
            alice, bob = await sign_up(keys), await sign_up(keys)
            conversation = await direct(messages, alice, bob)
            for i in range(SENT):
                sender = (alice, bob)[i % 2]
                await send(messages, sender, conversation, f"ciphertext {step} {i}".encode() * 8)
            # Ten weeks of history; the newest three entries stay this week's.
            entries = [
                d
                async for d in db["messages"]
                .find({"conversation_id": conversation}, {"_id": 1})
                .sort("version", 1)
            ]
            start = datetime.now(UTC) - timedelta(days=70)
            for i, doc in enumerate(entries[:-3]):
                await db["messages"].update_one(
                    {"_id": doc["_id"]}, {"$set": {"created_at": start + timedelta(days=3 * i)}}
                )
            before = await all_messages(messages, bob, conversation)
            assert len(before) == SENT
            # Past the window in seconds: every id is old enough to be a candidate.
            await asyncio.sleep(WINDOW_SECONDS + 0.5)
            objects_before = bucket.keys()

            await kill_at(config, step)
            after_kill = bucket.keys() - objects_before
            assert after_kill, "the killed run had written its first object"
            manifest_after_kill = await db["archive_manifest"].count_documents(
                {"conversation_id": conversation}
            )
            assert (manifest_after_kill > 0) == (STEPS.index(step) >= STEPS.index("recorded"))

            # The killed process's lease runs out; the rerun finishes the move.
            await asyncio.sleep(LEASE_SECONDS + 0.5)
            await run_archiver(config)

            manifest = [
                d async for d in db["archive_manifest"].find({"conversation_id": conversation})
            ]
            named = {d["object_key"] for d in manifest}
            mine = bucket.keys() - objects_before
            assert after_kill <= mine, "the rerun wrote the same objects the killed run had"
            assert mine == named, "every object is named by the manifest, and only those"
            spans = sorted((d["version_lo"], d["version_hi"]) for d in manifest)
            assert all(a[1] < b[0] for a, b in itertools.pairwise(spans)), spans
            cold_ids = [
                r["id"]
                for key in sorted(named)
                for r in bucket.rows(key)
                if r["conversation_id"] == conversation
            ]
            hot_ids = [
                d["_id"]
                async for d in db["messages"].find({"conversation_id": conversation}, {"_id": 1})
            ]
            assert len(cold_ids) == len(set(cold_ids)), "nothing twice in the archive"
            assert not set(cold_ids) & set(hot_ids), "nothing in both tiers"
            assert sorted(cold_ids + hot_ids) == sorted(d["_id"] for d in entries), "nothing lost"
            assert len(cold_ids) == len(entries) - 3, "every week but this one moved"

            assert history(await all_messages(messages, bob, conversation)) == history(before)
            assert history(await backward(messages, alice, conversation)) == history(before[::-1])
    finally:
        await mongo.close()
