"""The bare gRPC baseline: what grpcio alone does on this machine, in this run.

A separate server process (as the real services are) with two methods behind
generic handlers and identity (bytes) serializers, so no proto is needed:

- ``Echo``: unary, returns the request; measured with the same number of
  closed-loop callers as the send phase.
- ``Push``: server streaming; the server writes messages to each stream as fast
  as it can, one awaited write per message (as the Connect stream does), until
  the client cancels or ``max_seconds`` passes.

Run the server as ``python -m parley_dev.bench.baseline --port P --loop uvloop``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import struct
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Literal

import grpc

from parley_dev.bench.load import (
    CALL_TIMEOUT_SECONDS,
    Hook,
    LoadResult,
    Window,
    closed_loop,
    watch_window,
)
from parley_dev.process import ManagedProcess, free_port

SERVICE = "parley.bench.v1.Baseline"
ECHO = f"/{SERVICE}/Echo"
PUSH = f"/{SERVICE}/Push"
HOST = "127.0.0.1"
READY_SECONDS = 30.0
STOP_SECONDS = 5.0
# Push request: payload size in bytes, then the most seconds to push for.
_PUSH_REQUEST = struct.Struct("!Id")
# The server reads the clock every this many writes: the clock is not free.
_CLOCK_EVERY = 64

EventLoop = Literal["uvloop", "asyncio"]


# -- server -------------------------------------------------------------------------


async def _echo(request: bytes, context: Any) -> bytes:
    return request


async def _push(request: bytes, context: Any) -> AsyncIterator[bytes]:
    size, max_seconds = _PUSH_REQUEST.unpack(request)
    payload = b"\x5a" * size
    deadline = time.monotonic() + min(max_seconds, 600.0)
    while True:
        for _ in range(_CLOCK_EVERY):
            yield payload
        if time.monotonic() >= deadline:
            return


async def serve(port: int) -> None:
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    handler = grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo),
            "Push": grpc.unary_stream_rpc_method_handler(_push),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"{HOST}:{port}") == 0:
        raise OSError(f"cannot bind {HOST}:{port}")
    await server.start()
    print(f"baseline server listening on {HOST}:{port}", flush=True)
    await server.wait_for_termination()


def run_loop(main: Any, loop: EventLoop) -> None:
    """Run a coroutine on the chosen event loop (the services' own switch)."""
    if loop == "uvloop":
        import uvloop

        uvloop.run(main)
    else:
        asyncio.run(main)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="bare gRPC baseline server for parley bench")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--loop", choices=["uvloop", "asyncio"], default="uvloop")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        run_loop(serve(args.port), args.loop)
    return 0


# -- client -------------------------------------------------------------------------


class BaselineServer:
    """The baseline server as a child process, stopped by its own PID."""

    def __init__(
        self,
        *,
        work_dir: Path,
        loop: EventLoop,
        module: str = "parley_dev.bench.baseline",
        extra_args: Sequence[str] = (),
        name: str = "baseline",
    ) -> None:
        # ``module``: another server of the same shape (it must answer Echo).
        self.port = free_port()
        self.target = f"{HOST}:{self.port}"
        self.name = name
        self.process = ManagedProcess(
            name,
            [
                sys.executable,
                *("-m", module),
                *("--port", str(self.port), "--loop", loop, *extra_args),
            ],
            log_path=work_dir / f"{name}.log",
            cwd=work_dir,
        )

    async def start(self, channel: grpc.aio.Channel) -> None:
        self.process.start()
        echo = channel.unary_unary(ECHO, None, None)
        deadline = time.monotonic() + READY_SECONDS
        while True:
            if not self.process.alive():
                raise RuntimeError(
                    f"{self.name} server exited with {self.process.returncode}:\n"
                    f"{self.process.log_tail()}"
                )
            try:
                await echo(b"ready", timeout=1.0)
            except grpc.aio.AioRpcError:
                if time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
            else:
                return

    async def stop(self) -> None:
        await self.process.terminate(STOP_SECONDS)


async def unary_phase(
    channel: grpc.aio.Channel,
    *,
    callers: int,
    payload_bytes: int,
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
    method: str = ECHO,
) -> LoadResult:
    """``callers`` closed-loop callers of a unary ``method`` taking bytes."""
    # No serializers: requests and replies are bytes as they are.
    unary = channel.unary_unary(method, None, None)
    payload = b"\x5a" * payload_bytes

    async def call(_worker: int) -> None:
        await unary(payload, timeout=CALL_TIMEOUT_SECONDS)

    return await closed_loop(callers, call, window=window, on_start=on_start, on_end=on_end)


async def push_phase(
    channel: grpc.aio.Channel,
    *,
    streams: int,
    payload_bytes: int,
    window: Window,
    on_start: Sequence[Hook] = (),
    on_end: Sequence[Hook] = (),
) -> LoadResult:
    """Messages per second received over ``streams`` server-push streams in the window."""
    push = channel.unary_stream(PUSH, None, None)
    max_seconds = (window.end_ns - time.perf_counter_ns()) / 1e9 + 2.0
    request = _PUSH_REQUEST.pack(payload_bytes, max_seconds)
    received = 0
    at_edges: list[int] = []
    result = LoadResult(window.seconds)

    async def mark() -> None:
        at_edges.append(received)

    async def reader() -> None:
        nonlocal received
        call = push(request, timeout=max_seconds + CALL_TIMEOUT_SECONDS)
        try:
            async for _message in call:
                received += 1
                if time.perf_counter_ns() > window.end_ns:
                    break
        except grpc.aio.AioRpcError as exc:
            result.errors[exc.code().name] += 1
        finally:
            call.cancel()

    readers = [asyncio.create_task(reader()) for _ in range(streams)]
    try:
        await watch_window(window, [mark, *on_start], [mark, *on_end])
    finally:
        for task in readers:
            task.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
    result.completed = at_edges[1] - at_edges[0] if len(at_edges) == 2 else 0
    return result


if __name__ == "__main__":
    sys.exit(main())
