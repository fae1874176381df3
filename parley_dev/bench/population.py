"""Simulated users over the real API: sign-up, direct conversations, bench message bodies.

Each user is one account with one device. Users come in pairs, each pair
sharing one direct conversation, so the load spreads over many conversations
instead of one hot one.
"""

from __future__ import annotations

import asyncio
import os
import struct
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from parley.common.v1 import common_pb2 as cpb
from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.bench.load import CALL_TIMEOUT_SECONDS

# Sign-ups and conversation creation in parallel, but not so many that setup
# itself overloads a 2-core machine.
SETUP_CONCURRENCY = 16
Metadata = tuple[tuple[str, str], ...]
T = TypeVar("T")


def request_id() -> str:
    return str(uuid.uuid4())


@dataclass(frozen=True, slots=True)
class User:
    index: int
    handle: str
    account_id: str
    device_id: str
    metadata: Metadata
    # Which svc_message instance this user's device talks to.
    target: int


@dataclass(frozen=True, slots=True)
class Pair:
    index: int
    conversation_id: str
    a: User
    b: User

    def sender(self, turn: int) -> tuple[User, User]:
        """(sender, recipient) for the ``turn``-th message: the two members alternate."""
        return (self.a, self.b) if turn % 2 == 0 else (self.b, self.a)


async def bounded_gather(
    count: int, make: Callable[[int], Awaitable[T]], *, limit: int = SETUP_CONCURRENCY
) -> list[T]:
    gate = asyncio.Semaphore(limit)

    async def one(index: int) -> T:
        async with gate:
            return await make(index)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def sign_up_users(
    keys: kgrpc.AccountServiceAsyncStub, *, count: int, run_tag: str, targets: int
) -> list[User]:
    async def sign_up(index: int) -> User:
        handle = f"bench_{run_tag}_{index}"
        reply = await keys.SignUp(
            kpb.SignUpRequest(
                request_id=request_id(),
                handle=handle,
                display_name=f"Bench {index}",
                device=kpb.NewDevice(name="bench", platform=cpb.PLATFORM_CLI),
            ),
            timeout=CALL_TIMEOUT_SECONDS,
        )
        token = reply.credentials.access_token
        return User(
            index=index,
            handle=handle,
            account_id=reply.account.account_id,
            device_id=reply.device.device_id,
            metadata=(("authorization", f"Bearer {token}"),),
            target=index % targets,
        )

    return await bounded_gather(count, sign_up)


async def pair_up(
    stubs: Sequence[mgrpc.MessageServiceAsyncStub], users: Sequence[User]
) -> list[Pair]:
    """Users 2k and 2k+1 share a direct conversation."""

    async def create(index: int) -> Pair:
        a, b = users[2 * index], users[2 * index + 1]
        view = await stubs[a.target].CreateDirectConversation(
            mpb.CreateDirectConversationRequest(
                request_id=request_id(), peer_account_id=b.account_id
            ),
            metadata=a.metadata,
            timeout=CALL_TIMEOUT_SECONDS,
        )
        return Pair(index=index, conversation_id=view.conversation.conversation_id, a=a, b=b)

    return await bounded_gather(len(users) // 2, create)


# -- message bodies -------------------------------------------------------------------

PHASE_PREFILL = 0
PHASE_SEND = 1
PHASE_DELIVER = 2
_MAGIC = b"PRLYBNCH"
# magic, run tag, phase, measured flag, client send time (perf_counter_ns), serial.
_HEADER = struct.Struct("!8s4sBBQQ")
MIN_BODY_BYTES = _HEADER.size


@dataclass(frozen=True, slots=True)
class BodyHeader:
    run: bytes
    phase: int
    measured: bool
    sent_ns: int
    serial: int


class BodyCodec:
    """Bench bodies: a header the recipient reads, padded with random bytes to a fixed size.

    The server treats bodies as opaque ciphertext, so the timestamp travels in
    the body; sender and recipient are this same process, so their
    perf_counter_ns clocks agree.
    """

    def __init__(self, *, run: bytes, size: int) -> None:
        if len(run) != 4:
            raise ValueError("the run tag is 4 bytes")
        if size < MIN_BODY_BYTES:
            raise ValueError(f"bodies need at least {MIN_BODY_BYTES} bytes")
        self.run = run
        self.size = size
        # Random like ciphertext; one pad for all, since only the size matters.
        self._pad = os.urandom(size - MIN_BODY_BYTES)

    def encode(self, *, phase: int, measured: bool, sent_ns: int, serial: int) -> bytes:
        return _HEADER.pack(_MAGIC, self.run, phase, measured, sent_ns, serial) + self._pad

    def decode(self, body: bytes) -> BodyHeader | None:
        """The header of one of this run's bodies, or None for any other body."""
        if len(body) < MIN_BODY_BYTES or not body.startswith(_MAGIC):
            return None
        _magic, run, phase, measured, sent_ns, serial = _HEADER.unpack_from(body)
        if run != self.run:
            return None
        return BodyHeader(run, phase, bool(measured), sent_ns, serial)


def wire_sizes(body_bytes: int) -> tuple[int, int]:
    """Serialized sizes of a SendMessageRequest and of a one-message ServerEvent.

    The baseline sends payloads of these sizes, so it moves as many bytes per
    call and per pushed message as the real API does.
    """
    some_id = str(uuid.uuid4())
    body = b"\x00" * body_bytes
    send = mpb.SendMessageRequest(
        request_id=some_id, conversation_id=some_id, type=mpb.MESSAGE_TYPE_TEXT, body=body
    )
    message = mpb.Message(
        message_id=some_id,
        conversation_id=some_id,
        seq=1_000,
        sender_account_id=some_id,
        sender_device_id=some_id,
        type=mpb.MESSAGE_TYPE_TEXT,
        body=body,
    )
    message.create_time.GetCurrentTime()
    event = mpb.ServerEvent(events=[mpb.Event(message=message)])
    return send.ByteSize(), event.ByteSize()
