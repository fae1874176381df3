"""Fuzz every RPC of AccountService, KeyService, MessageService, PresenceService, the
media services (MediaService with a user's token, MediaAdminService with an operator's,
MediaReferenceService with the service credential), MessageInternalService and
PresenceInternalService (with the service credential), Connect included. The erasure
RPCs never name the fuzzer's own accounts (tests/chaos/fuzzing.py swaps them).

Requests come from hypothesis: random fields, huge and empty values, invalid
ids and ids of the wrong kind (a message id where a conversation id is
expected), negative and huge ints, unknown enum numbers, random page tokens,
and raw bytes that are not a valid protobuf at all (sent with identity
serializers). Every answer must be an expected status (never INTERNAL,
UNKNOWN, UNAVAILABLE...), a RESOURCE_EXHAUSTED must say why (gRPC's own size
refusal, a cap's own reason, or a rate-limit refusal naming one of the RPC's
limits with a RetryInfo: the bundle-fetch limits keep their defaults here),
and the services must stay healthy. tests/chaos/test_fuzz_limits.py fuzzes
every limited RPC again on a stack whose limits refuse. The machinery is in
tests/chaos/fuzzing.py.

The tests are synchronous (hypothesis drives them) and use gRPC's blocking
client; the stack runs in other processes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
import pytest_asyncio
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.message.v1 import messages_pb2 as mpb
from parley_core.ids import is_valid_id
from parley_dev.stack import LocalStack
from tests.chaos.conftest import ensure_running
from tests.chaos.fuzz_world import MESSAGE_SERVICE, build_world
from tests.chaos.fuzzing import (
    CALL_TIMEOUT,
    FUZZ,
    UNARY,
    Caller,
    World,
    assert_healthy,
    fuzz_bytes,
    fuzz_fields,
    message_values,
    parses,
    path,
    raw_values,
    string_values,
)

pytestmark = pytest.mark.chaos


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(chaos_stack: LocalStack) -> World:
    await ensure_running(chaos_stack)
    return await build_world(chaos_stack)


@pytest.fixture(scope="module")
def caller(world: World) -> Iterator[Caller]:
    opened = Caller(world)
    yield opened
    assert_healthy(world)
    opened.close()


# -- unary RPCs --------------------------------------------------------------------------


def _ids(entry: tuple[Any, Any]) -> str:
    return str(entry[1].name)


@pytest.mark.parametrize("rpc", UNARY, ids=_ids)
def test_fuzzed_requests_get_expected_statuses(rpc: tuple[Any, Any], caller: Caller) -> None:
    fuzz_fields(caller, *rpc)


@pytest.mark.parametrize("rpc", UNARY, ids=_ids)
def test_bytes_that_are_no_request_are_invalid_argument(
    rpc: tuple[Any, Any], caller: Caller
) -> None:
    fuzz_bytes(caller, *rpc)


# -- Connect -----------------------------------------------------------------------------

MAX_POSITIONS = 10_000
SYNC_TOKEN_DIGITS = 15
# Sync tokens are Unix milliseconds up to 9999-12-31: later ones are no instant.
MAX_SYNC_TOKEN_MS = 253_402_214_400_000
STREAM_TIMEOUT = 10.0


def valid_resume(event: mpb.ClientEvent) -> bool:
    resume = event.resume
    if len(resume.positions) > MAX_POSITIONS:
        return False
    for position in resume.positions:
        if not position.conversation_id or not is_valid_id(position.conversation_id):
            return False
        if position.seq < 0 or position.version < 0:
            return False
    token = resume.sync_token
    if token == "":
        return True
    return (
        token.isascii()
        and token.isdigit()
        and len(token) <= SYNC_TOKEN_DIGITS
        and int(token) <= MAX_SYNC_TOKEN_MS
    )


@dataclass
class Prediction:
    invalid: bool
    pings: list[int]


def predict(frames: Sequence[bytes]) -> Prediction:
    """What the server must do with these frames, from the API's contract:
    the first event is a valid resume, then only acks, pings and typing."""
    pings: list[int] = []
    for index, raw in enumerate(frames):
        event = parses(mpb.ClientEvent.DESCRIPTOR, raw)
        if event is None:
            return Prediction(True, pings)
        kind = event.WhichOneof("kind")
        if index == 0:
            if kind != "resume" or not valid_resume(event):  # type: ignore[arg-type]
                return Prediction(True, pings)
        elif kind == "ping":
            pings.append(event.ping.nonce)  # type: ignore[attr-defined]
        elif kind not in ("ack", "typing"):
            return Prediction(True, pings)
    return Prediction(False, pings)


def client_frames(world: World) -> st.SearchStrategy[list[bytes]]:
    event = message_values(world, mpb.ClientEvent.DESCRIPTOR).map(lambda m: m.SerializeToString())
    resume = st.builds(
        lambda seqs, token: mpb.ClientEvent(
            resume=mpb.Resume(
                positions=[
                    mpb.ConversationPosition(conversation_id=c, seq=s, version=s)
                    for c, s in zip(
                        [world.conversation, world.foreign_conversation, *world.message_ids],
                        seqs,
                        strict=False,
                    )
                ],
                sync_token=token,
            )
        ).SerializeToString(),
        st.lists(st.integers(0, 2**63 - 1) | st.sampled_from([0, 1, 3]), max_size=3),
        string_values(world, "sync_token"),
    )
    ping = st.integers(-(2**63), 2**63 - 1).map(
        lambda n: mpb.ClientEvent(ping=mpb.Ping(nonce=n)).SerializeToString()
    )
    frame = st.one_of(event, ping, raw_values(world, mpb.ClientEvent.DESCRIPTOR))
    return st.one_of(
        st.lists(frame, max_size=4),
        st.tuples(resume, st.lists(st.one_of(ping, event, frame), max_size=4)).map(
            lambda t: [t[0], *t[1]]
        ),
    )


def run_connect(channel: grpc.Channel, world: World, frames: list[bytes]) -> None:
    prediction = predict(frames)
    call = channel.stream_stream(
        path(MESSAGE_SERVICE, MESSAGE_SERVICE.methods_by_name["Connect"]),
        request_serializer=None,
        response_deserializer=mpb.ServerEvent.FromString,
    )(iter(frames), metadata=world.me.md, timeout=STREAM_TIMEOUT)
    kinds: list[str] = []
    pongs: list[int] = []

    def done() -> bool:
        return not prediction.invalid and "sync_complete" in kinds and pongs == prediction.pings

    try:
        for server_event in call:
            for event in server_event.events:
                kinds.append(event.WhichOneof("kind") or "")
                if event.WhichOneof("kind") == "pong":
                    pongs.append(event.pong.nonce)
            if frames and done():
                break
    except grpc.RpcError as error:
        code = error.code()  # type: ignore[attr-defined]
        assert prediction.invalid, f"valid stream {frames!r:.300} ended with {code} {kinds}"
        assert code in (
            grpc.StatusCode.INVALID_ARGUMENT,
            grpc.StatusCode.RESOURCE_EXHAUSTED,  # a frame over the server's size limit
        ), f"{frames!r:.300}: {code} {error.details()!r}"  # type: ignore[attr-defined]
        return
    finally:
        call.cancel()
    if not frames:
        assert kinds == [], "a stream closed before resume gets nothing"
        return
    assert not prediction.invalid, f"invalid stream {frames!r:.300} was accepted: {kinds}"
    assert kinds.count("sync_complete") == 1
    assert pongs == prediction.pings, "every ping is answered once, in order"


def test_fuzzed_connect_streams(world: World, caller: Caller) -> None:
    @settings(FUZZ, max_examples=300)
    @given(frames=client_frames(world))
    def run(frames: list[bytes]) -> None:
        run_connect(caller.message, world, frames)

    run()


def test_fuzz_left_the_services_healthy(world: World, caller: Caller) -> None:
    started = time.monotonic()
    assert_healthy(world)
    assert time.monotonic() - started < CALL_TIMEOUT
