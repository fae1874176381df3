"""Test users made through the real API: sign-up, devices, stubs, streams."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import message_factory
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.helpers import Metadata, auth


def rid() -> str:
    return str(uuid.uuid4())


def unique_handle(prefix: str = "user") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


@dataclass
class Device:
    account_id: str
    device_id: str
    access_token: str
    refresh_token: str
    handle: str

    @property
    def md(self) -> Metadata:
        return auth(self.access_token)


async def sign_up(keys: kgrpc.AccountServiceStub, handle: str | None = None) -> Device:
    handle = handle or unique_handle()
    reply = await keys.SignUp(
        kpb.SignUpRequest(
            request_id=rid(),
            handle=handle,
            display_name=handle.title(),
            device=kpb.NewDevice(name="phone", platform=1),
        )
    )
    return Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )


async def link_device(
    keys: kgrpc.AccountServiceStub, owner: Device, name: str = "laptop"
) -> Device:
    reply = await keys.RegisterDevice(
        kpb.RegisterDeviceRequest(request_id=rid(), device=kpb.NewDevice(name=name, platform=4)),
        metadata=owner.md,
    )
    return Device(
        account_id=reply.device.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=owner.handle,
    )


async def direct(messages: mgrpc.MessageServiceStub, a: Device, b: Device) -> str:
    view = await messages.CreateDirectConversation(
        mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=b.account_id),
        metadata=a.md,
    )
    return view.conversation.conversation_id


async def send(
    messages: mgrpc.MessageServiceStub,
    device: Device,
    conversation_id: str,
    body: bytes,
    *,
    request_id: str | None = None,
) -> mpb.Message:
    reply = await messages.SendMessage(
        mpb.SendMessageRequest(
            request_id=request_id or rid(),
            conversation_id=conversation_id,
            type=mpb.MESSAGE_TYPE_TEXT,
            body=body,
        ),
        metadata=device.md,
    )
    return reply.message


async def all_messages(
    messages: mgrpc.MessageServiceStub, device: Device, conversation_id: str
) -> list[mpb.Message]:
    """The whole history, oldest first, following page tokens."""
    result: list[mpb.Message] = []
    token = ""
    for _ in range(10_000):
        page = await messages.ListMessages(
            mpb.ListMessagesRequest(
                conversation_id=conversation_id,
                page_size=200,
                page_token=token,
                direction=mpb.DIRECTION_FORWARD,
            ),
            metadata=device.md,
        )
        result.extend(page.messages)
        token = page.next_page_token
        if not token:
            return result
    raise AssertionError("history did not end")


@dataclass
class Stream:
    """A live Connect stream collecting events in the background."""

    call: grpc.aio.StreamStreamCall  # type: ignore[type-arg]
    outgoing: asyncio.Queue[mpb.ClientEvent | None]
    events: list[mpb.Event] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    error: grpc.aio.AioRpcError | None = None
    task: asyncio.Task[None] | None = None
    auto_ack: bool = True

    def messages(self, conversation_id: str | None = None) -> list[mpb.Message]:
        return [
            e.message
            for e in self.events
            if e.WhichOneof("kind") == "message"
            and (conversation_id is None or e.message.conversation_id == conversation_id)
        ]

    def kinds(self) -> list[str]:
        return [e.WhichOneof("kind") or "" for e in self.events]

    def positions(self) -> dict[str, int]:
        """Per conversation, the newest message seq held."""
        result: dict[str, int] = {}
        for m in self.messages():
            result[m.conversation_id] = max(result.get(m.conversation_id, 0), m.seq)
        return result

    def versions(self) -> dict[str, int]:
        """Per conversation, the newest change-feed version held (where to resume)."""
        result: dict[str, int] = {}
        for e in self.events:
            kind = e.WhichOneof("kind")
            if kind in ("message", "edit", "deletion", "reaction"):
                change = getattr(e, kind)
                conversation_id = change.conversation_id
                result[conversation_id] = max(result.get(conversation_id, 0), change.version)
        return result

    def acks(self) -> list[mpb.ConversationPosition]:
        seqs = self.positions()
        return [
            mpb.ConversationPosition(conversation_id=c, version=v, seq=seqs.get(c, 0))
            for c, v in self.versions().items()
        ]

    async def wait_for(self, predicate: object, *, timeout: float = 10.0) -> None:
        assert callable(predicate)
        deadline = asyncio.get_running_loop().time() + timeout
        while not predicate(self):
            if self.error is not None:
                raise AssertionError(f"stream failed: {self.error.code()} {self.error.details()}")
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise AssertionError(f"timed out; stream saw {self.kinds()}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), timeout=min(remaining, 0.5))

    async def close(self) -> None:
        self.outgoing.put_nowait(None)
        self.call.cancel()
        if self.task is not None:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task


async def open_stream(
    messages: mgrpc.MessageServiceStub,
    device: Device,
    *,
    positions: dict[str, int] | None = None,  # conversation -> version held
    sync_token: str = "",
    auto_ack: bool = True,
) -> Stream:
    outgoing: asyncio.Queue[mpb.ClientEvent | None] = asyncio.Queue()
    outgoing.put_nowait(
        mpb.ClientEvent(
            resume=mpb.Resume(
                positions=[
                    mpb.ConversationPosition(conversation_id=c, version=v)
                    for c, v in (positions or {}).items()
                ],
                sync_token=sync_token,
            )
        )
    )

    async def requests() -> AsyncIterator[mpb.ClientEvent]:
        while True:
            event = await outgoing.get()
            if event is None:
                return
            yield event

    call = messages.Connect(requests(), metadata=device.md)
    stream = Stream(call=call, outgoing=outgoing, auto_ack=auto_ack)

    async def read() -> None:
        try:
            async for server_event in call:
                stream.events.extend(server_event.events)
                if stream.auto_ack:
                    acks = stream.acks()
                    if acks:
                        outgoing.put_nowait(mpb.ClientEvent(ack=mpb.Ack(positions=acks)))
                stream.arrived.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                stream.error = exc
            stream.arrived.set()

    stream.task = asyncio.create_task(read())
    return stream


def synced(stream: Stream) -> bool:
    return "sync_complete" in stream.kinds()


async def sign_up_many(
    keys: kgrpc.AccountServiceStub, count: int, *, concurrency: int = 32, prefix: str = "user"
) -> list[Device]:
    """``count`` fresh accounts, signed up ``concurrency`` at a time."""
    limit = asyncio.Semaphore(concurrency)

    async def one() -> Device:
        async with limit:
            return await sign_up(keys, unique_handle(prefix))

    return list(await asyncio.gather(*(one() for _ in range(count))))


def open_resumed_stream(
    messages: mgrpc.MessageServiceStub, device: Device, resume: mpb.Resume
) -> Stream:
    """A Connect stream that starts with exactly this ``resume`` and never acks
    on its own: the caller acks through ``stream.outgoing`` (tests/feed_view.py)."""
    outgoing: asyncio.Queue[mpb.ClientEvent | None] = asyncio.Queue()
    outgoing.put_nowait(mpb.ClientEvent(resume=resume))

    async def requests() -> AsyncIterator[mpb.ClientEvent]:
        while True:
            event = await outgoing.get()
            if event is None:
                return
            yield event

    call = messages.Connect(requests(), metadata=device.md)
    stream = Stream(call=call, outgoing=outgoing, auto_ack=False)

    async def read() -> None:
        try:
            async for server_event in call:
                stream.events.extend(server_event.events)
                stream.arrived.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                stream.error = exc
            stream.arrived.set()

    stream.task = asyncio.create_task(read())
    return stream


def error_reason(error: grpc.aio.AioRpcError) -> str:
    """The google.rpc.ErrorInfo reason of a failed call ("" when it has none)."""
    status = rpc_status.from_call(error)
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return str(info.reason)
    return ""


def error_fields(error: grpc.aio.AioRpcError) -> list[str]:
    """The fields named by the google.rpc.BadRequest details of a failed call."""
    status = rpc_status.from_call(error)
    fields: list[str] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields.extend(v.field for v in bad.field_violations)
    return fields


async def rpc(stub: Any, method: str, device: Device, **fields: Any) -> Any:
    """Calls ``method`` on ``stub`` as ``device`` with a request built from
    ``fields``; a fresh request_id is added when the request has one."""
    descriptor = stub_descriptor(stub).methods_by_name[method].input_type
    if "request_id" in descriptor.fields_by_name:
        fields.setdefault("request_id", rid())
    request = message_factory.GetMessageClass(descriptor)(**fields)
    return await getattr(stub, method)(request, metadata=device.md)


def stub_descriptor(stub: Any) -> Any:
    """The service descriptor of a generated stub."""
    if isinstance(stub, mgrpc.MessageServiceStub):
        return mpb.DESCRIPTOR.services_by_name["MessageService"]
    return kpb.DESCRIPTOR.services_by_name["AccountService"]
