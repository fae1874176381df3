"""The local stack manager against real processes: SecantusDB, Redis, SeaweedFS and the
services."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import sys
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest
from pymongo import AsyncMongoClient, WriteConcern
from redis.asyncio import Redis

from parley.keys.v1.accounts_pb2_grpc import AccountServiceStub
from parley.media.v1 import media_pb2 as media_pb
from parley.media.v1 import media_pb2_grpc as media_grpc
from parley_dev.cli import build_parser
from parley_dev.probes import StackError, mongo_ping, redis_ping, wait_until_ready
from parley_dev.process import ManagedProcess, free_port, free_ports, port_is_free
from parley_dev.stack import LocalStack, StackPorts
from parley_dev.supervisor import Supervisor
from tests.helpers import SERVING, health_status, http_get, is_serving, wait_until
from tests.media_world import Blob
from tests.media_world import send as send_presigned
from tests.parley_up import free_offset, parley_up
from tests.users import Device, sign_up

Doc = dict[str, object]


def python_process(tmp_path: Path, name: str, code: str) -> ManagedProcess:
    return ManagedProcess(
        name, [sys.executable, "-c", code], log_path=tmp_path / f"{name}.log", cwd=tmp_path
    )


async def _fails(probe: Awaitable[object]) -> bool:
    try:
        await probe
    except Exception:
        return True
    return False


# -- processes --------------------------------------------------------------------


def test_free_ports_are_distinct_and_bindable() -> None:
    ports = free_ports(8)
    assert len(set(ports)) == 8
    assert port_is_free(free_port())
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not port_is_free(listener.getsockname()[1])


async def test_terminate_stops_a_process_and_logs_are_appended(tmp_path: Path) -> None:
    process = python_process(
        tmp_path, "sleeper", "import time; print('hello', 'child', flush=True); time.sleep(60)"
    )
    process.start()
    assert process.alive()
    assert process.pid is not None
    await wait_until(
        lambda: asyncio.sleep(0, "hello child" in process.log_tail()),
        timeout=10,
        what="child output in the log",
    )
    assert await process.terminate(timeout=10) == -signal.SIGTERM
    assert not process.alive()
    process.start()  # restartable, and the log keeps the first run
    await process.terminate(timeout=10)
    assert process.log_path.read_text().count("starting sleeper") == 2


async def test_terminate_falls_back_to_sigkill(tmp_path: Path) -> None:
    process = python_process(
        tmp_path,
        "stubborn",
        "import signal, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "print('ignoring', 'TERM', flush=True)\n"
        "time.sleep(60)\n",
    )
    process.start()
    await wait_until(
        lambda: asyncio.sleep(0, "ignoring TERM" in process.log_tail()), timeout=10, what="startup"
    )
    assert await process.terminate(timeout=0.5) == -signal.SIGKILL


async def test_readiness_fails_fast_with_the_log_tail_when_the_child_dies(
    tmp_path: Path,
) -> None:
    process = python_process(tmp_path, "crasher", "print('boom: bad config'); raise SystemExit(3)")
    process.start()

    async def never_ready() -> None:
        raise ConnectionRefusedError("nothing listens")

    with pytest.raises(StackError, match="exited with code 3") as failure:
        await wait_until_ready(process, never_ready, what="a probe", timeout=30)
    assert "boom: bad config" in str(failure.value)


async def test_readiness_times_out_with_the_last_error(tmp_path: Path) -> None:
    process = python_process(tmp_path, "mute", "import time; time.sleep(60)")
    process.start()

    async def never_ready() -> None:
        raise ConnectionRefusedError("nothing listens")

    try:
        with pytest.raises(StackError, match=r"not ready after .*nothing listens"):
            await wait_until_ready(process, never_ready, what="a probe", timeout=0.3)
    finally:
        await process.terminate(timeout=5)


def test_parser_has_up_bench_and_the_chat_commands() -> None:
    parser = build_parser()
    args = parser.parse_args(["up", "--data-dir", "/tmp/x", "--message-instances", "2"])
    assert args.message_instances == 2
    assert args.data_dir == Path("/tmp/x")
    # The banner lists the chat commands, not the developer tools.
    assert "signup" in args.client_commands
    assert "bench" not in args.client_commands
    assert parser.parse_args(["signup", "alice"]).handle == "alice"


# -- the shared stack -------------------------------------------------------------------


async def test_every_service_answers_health_serving(stack: LocalStack) -> None:
    assert len(stack.message_targets) == 2
    for target in [stack.keys_target, *stack.message_targets]:
        assert await health_status(target) == SERVING, target
    for url in [stack.keys_metrics_url, *stack.message_metrics_urls]:
        status, _body = await http_get(url)
        assert status == 200, url
    await mongo_ping(stack.mongo_uri, timeout=5)
    await redis_ping(stack.redis_url, timeout=5)
    assert stack.settings.mongo.uri == stack.mongo_uri
    assert stack.config_path.exists()


async def test_a_busy_port_fails_with_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        busy = listener.getsockname()[1]
        ports = StackPorts.free()
        local = LocalStack(
            root=tmp_path,
            ports=StackPorts(
                mongo=busy,
                redis=ports.redis,
                keys=ports.keys,
                keys_metrics=ports.keys_metrics,
                message=ports.message,
                message_metrics=ports.message_metrics,
            ),
        )
        with pytest.raises(StackError, match=f"port {busy} .* in use"):
            await local.start()
    assert not local.process("redis").alive()


# -- persistence and failures ----------------------------------------------------------


@pytest.mark.slow
async def test_data_and_keys_survive_a_stack_restart(tmp_path: Path) -> None:
    root = tmp_path / "stack"
    first = LocalStack.with_free_ports(root=root, shutdown_grace_seconds=1.0)
    await first.start()
    try:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(first.mongo_uri)
        durable = client.get_database("stacktest", write_concern=WriteConcern(j=True))
        await durable.things.insert_one({"_id": "kept", "n": 1})
        await client.close()
        signing_key = first.private_key_path.read_bytes()
        credentials = (first.service_token, first.operator_token, first.s3_keys.read())
        owner, blob = await stored_media(first)
    finally:
        await first.stop()
    assert all(not first.process(n).alive() for n in first.component_names)

    second = LocalStack.with_free_ports(root=root, shutdown_grace_seconds=1.0)
    await second.start()
    try:
        client = AsyncMongoClient(second.mongo_uri)
        assert await client.stacktest.things.find_one({"_id": "kept"}) == {"_id": "kept", "n": 1}
        await client.close()
        assert second.private_key_path.read_bytes() == signing_key
        assert await is_serving(second.keys_target)
        assert (second.service_token, second.operator_token, second.s3_keys.read()) == credentials
        # The media uploaded before the restart is still there.
        async with grpc.aio.insecure_channel(second.media_target) as channel:
            download = await media_grpc.MediaServiceStub(channel).GetDownload(
                media_pb.GetDownloadRequest(media_id=blob.media_id), metadata=owner.md
            )
        assert (await send_presigned(download.get)).content == blob.data
    finally:
        await second.stop()


async def stored_media(stack: LocalStack) -> tuple[Device, Blob]:
    """An account and a file it uploaded through svc_media."""
    blob = Blob.random(10_000)
    async with (
        grpc.aio.insecure_channel(stack.keys_target) as keys_channel,
        grpc.aio.insecure_channel(stack.media_target) as media_channel,
    ):
        owner = await sign_up(AccountServiceStub(keys_channel))
        media = media_grpc.MediaServiceStub(media_channel)
        created = await media.CreateUpload(blob.request(), metadata=owner.md)
        assert (await send_presigned(created.upload.put, blob.data)).status_code == 200
        await media.CompleteUpload(
            media_pb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=owner.md
        )
    return owner, blob


@pytest.mark.chaos
async def test_kill_db_then_start_db_keeps_journaled_writes(tmp_path: Path) -> None:
    local = LocalStack.with_free_ports(root=tmp_path / "stack")
    await local.start_backends()
    try:
        client: AsyncMongoClient[Doc] = AsyncMongoClient(
            local.mongo_uri, serverSelectionTimeoutMS=1000
        )
        things = client.get_database("stacktest", write_concern=WriteConcern(j=True)).things
        await things.insert_many([{"_id": i} for i in range(50)])
        old_pid = local.process("secantusdb").pid
        await local.kill_db()
        assert local.process("secantusdb").returncode == -signal.SIGKILL
        assert await _fails(mongo_ping(local.mongo_uri, timeout=0.3))
        await local.start_db()
        assert local.process("secantusdb").pid != old_pid
        # The same client reconnects by itself once the server is back.
        assert await things.count_documents({}) == 50
        await client.close()
    finally:
        await local.stop()


@pytest.mark.chaos
async def test_stop_redis_then_start_redis(tmp_path: Path) -> None:
    local = LocalStack.with_free_ports(root=tmp_path / "stack")
    await local.start_backends()
    try:
        client = Redis.from_url(local.redis_url, socket_timeout=1, socket_connect_timeout=1)
        await client.set("k", "v")
        await local.stop_redis()
        assert not local.process("redis").alive()
        assert await _fails(redis_ping(local.redis_url, timeout=0.3))
        await client.aclose()
        await local.start_redis()
        # A fresh client: the old one's pooled connection died with the server.
        client = Redis.from_url(local.redis_url, socket_timeout=1, socket_connect_timeout=1)
        assert await client.ping()
        assert await client.get("k") is None  # no persistence: a restart starts empty
        await client.aclose()
    finally:
        await local.stop()


@pytest.mark.chaos
@pytest.mark.slow
async def test_kill_message_then_start_message_on_the_same_port(
    fresh_stack: LocalStack,
) -> None:
    target = fresh_stack.message_targets[0]
    old_pid = fresh_stack.message_process(0).pid
    await fresh_stack.kill_message(0)
    assert fresh_stack.message_process(0).returncode == -signal.SIGKILL
    assert not await is_serving(target, timeout=0.5)
    await fresh_stack.start_message(0)
    assert fresh_stack.message_process(0).pid != old_pid
    assert await health_status(target) == SERVING


@pytest.mark.chaos
@pytest.mark.slow
async def test_supervisor_restarts_a_crashed_service(fresh_stack: LocalStack) -> None:
    supervisor = Supervisor(
        fresh_stack,
        log=logging.getLogger("test.supervisor"),
        poll_seconds=0.1,
        initial_backoff=0.2,
    )
    stop = asyncio.Event()
    running = asyncio.create_task(supervisor.run(stop))
    try:
        old_pid = fresh_stack.message_process(0).pid
        await fresh_stack.kill_message(0)

        async def restarted() -> bool:
            process = fresh_stack.message_process(0)
            return process.alive() and process.pid != old_pid and supervisor.restart_count == 1

        await wait_until(restarted, timeout=90, what="svc_message-0 restarted")
        assert await health_status(fresh_stack.message_targets[0]) == SERVING
    finally:
        stop.set()
        await asyncio.wait_for(running, 90)


def test_backoff_doubles_up_to_the_cap(tmp_path: Path) -> None:
    supervisor = Supervisor(
        LocalStack.with_free_ports(root=tmp_path),
        log=logging.getLogger("test"),
        initial_backoff=1.0,
        max_backoff=30.0,
    )
    assert [supervisor.backoff(n) for n in (1, 2, 3, 4, 5, 6, 100)] == [1, 2, 4, 8, 16, 30, 30]


# -- `parley up` ------------------------------------------------------------------------


@pytest.mark.slow
async def test_parley_up_serves_until_sigterm_then_exits_zero(tmp_path: Path) -> None:
    offset = free_offset()
    ports = StackPorts.defaults(1, offset=offset)
    args = ["--data-dir", str(tmp_path / "data"), "--port-offset", str(offset)]
    async with parley_up(args) as output:
        assert await health_status(f"127.0.0.1:{ports.keys}") == SERVING
        assert await health_status(f"127.0.0.1:{ports.message[0]}") == SERVING
        assert await health_status(f"127.0.0.1:{ports.media}") == SERVING
    text = "".join(output)
    assert f"127.0.0.1:{ports.keys}" in text
    assert f"http://127.0.0.1:{ports.s3} (bucket parley-media)" in text
    assert f"mongodb://127.0.0.1:{ports.mongo}/" in text
    assert f"redis://127.0.0.1:{ports.redis}/0" in text
    assert all(port_is_free(p) for p in ports.all()), "a child outlived `parley up`"
