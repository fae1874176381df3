"""The thin durable service: what a durable send can cost on this machine.

Bare gRPC alone says nothing of the database. This is the thinnest service
that acks a request only once it is durable: bare gRPC unary (the same
process model, generic handler and identity serializers as
:mod:`parley_dev.bench.baseline`) whose handler stores each request as one
document, group-committed as svc_message's send pipeline does: requests queue
while one ordered ``insert_many`` is in flight, and the next batch takes
everything queued (up to the services' batch cap). Same client settings and
write concern as the services (:mod:`parley_core.storage.mongo`: w=majority,
j=true), into the stack's own database server, in a database of its own
(dropped when the server starts and when it stops) so the stack's collections
are not touched.

Run the server as ``python -m parley_dev.bench.thin_durable --port P --mongo-uri URI``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from collections import deque
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import grpc

from parley_core.config import MessageServiceSettings, MongoSettings
from parley_core.storage.mongo import connect, durable_database
from parley_dev.bench.baseline import (
    HOST,
    SERVICE,
    BaselineServer,
    EventLoop,
    run_loop,
    unary_phase,
)
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS, Hook, LoadResult, Window

SEND = f"/{SERVICE}/DurableSend"
STATS = f"/{SERVICE}/DurableStats"
DATABASE = "parley_bench_thin_durable"
COLLECTION = "sends"
# The services' own cap on a send batch.
BATCH_MAX: int = MessageServiceSettings.model_fields["send_batch_max"].default
STOP_GRACE_SECONDS = 1.0


class Collection(Protocol):
    async def insert_many(self, documents: list[dict[str, Any]], *, ordered: bool) -> Any: ...


class GroupCommit:
    """Each submitted document is acked once a batch holding it is durable.

    One batch in flight at a time; whatever queued meanwhile is the next batch.
    """

    def __init__(self, collection: Collection, *, batch_max: int = BATCH_MAX) -> None:
        self._collection = collection
        self._batch_max = batch_max
        self._queue: deque[tuple[dict[str, Any], asyncio.Future[None]]] = deque()
        self._wake = asyncio.Event()
        self.batches = 0
        self.documents = 0

    async def submit(self, document: dict[str, Any]) -> None:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.append((document, future))
        self._wake.set()
        # Shielded: a caller that gives up must not cancel the batch's write.
        await asyncio.shield(future)

    async def run(self) -> None:
        """The committer, until cancelled."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                count = min(len(self._queue), self._batch_max)
                batch = [self._queue.popleft() for _ in range(count)]
                try:
                    await self._collection.insert_many([d for d, _ in batch], ordered=True)
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.batches += 1
                self.documents += len(batch)
                for _, future in batch:
                    if not future.done():
                        future.set_result(None)

    def stats(self) -> dict[str, int]:
        return {"batches": self.batches, "documents": self.documents}


# -- server -------------------------------------------------------------------------


async def serve(port: int, mongo_uri: str) -> None:
    settings = MongoSettings(uri=mongo_uri, database=DATABASE)
    client = connect(settings, app_name="parley-bench-thin-durable")
    database = durable_database(client, settings)
    await client.drop_database(DATABASE)
    commit = GroupCommit(database[COLLECTION])

    async def durable_send(request: bytes, context: Any) -> bytes:
        await commit.submit({"payload": request, "created_at": datetime.now(UTC)})
        return b""

    async def echo(request: bytes, context: Any) -> bytes:
        return request

    async def durable_stats(request: bytes, context: Any) -> bytes:
        return json.dumps(commit.stats()).encode()

    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "DurableSend": grpc.unary_unary_rpc_method_handler(durable_send),
            "DurableStats": grpc.unary_unary_rpc_method_handler(durable_stats),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"{HOST}:{port}") == 0:
        raise OSError(f"cannot bind {HOST}:{port}")
    stop = asyncio.Event()
    # SIGTERM (how the bench stops it) ends the server cleanly, so its database is dropped.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    committer = asyncio.create_task(commit.run())
    await server.start()
    print(f"thin durable server listening on {HOST}:{port}, database {DATABASE}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(STOP_GRACE_SECONDS)
        committer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await committer
        await client.drop_database(DATABASE)
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="thin durable server for parley bench")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--mongo-uri", required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(args.port, args.mongo_uri), args.loop)
    return 0


# -- client -------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_thin_durable(
    *, work_dir: Path, loop: EventLoop, mongo_uri: str
) -> AsyncIterator[tuple[BaselineServer, grpc.aio.Channel]]:
    """The thin durable server as a child process, and a channel to it once it answers."""
    server = BaselineServer(
        work_dir=work_dir,
        loop=loop,
        module="parley_dev.bench.thin_durable",
        extra_args=("--mongo-uri", mongo_uri),
        name="thin_durable",
    )
    async with grpc.aio.insecure_channel(server.target) as channel:
        await server.start(channel)
        try:
            yield server, channel
        finally:
            await server.stop()


async def thin_durable_phase(
    channel: grpc.aio.Channel,
    *,
    callers: int,
    payload_bytes: int,
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> LoadResult:
    """``callers`` closed-loop callers, each request one durable document."""
    return await unary_phase(
        channel,
        callers=callers,
        payload_bytes=payload_bytes,
        window=window,
        on_start=on_start,
        on_end=on_end,
        method=SEND,
    )


async def thin_durable_stats(channel: grpc.aio.Channel) -> dict[str, int]:
    """Batches and documents the server has committed so far."""
    reply = await channel.unary_unary(STATS, None, None)(b"", timeout=CALL_TIMEOUT_SECONDS)
    stats: dict[str, int] = json.loads(reply)
    return stats


if __name__ == "__main__":
    sys.exit(main())
