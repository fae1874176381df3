"""The fuzz tests' world (real accounts and ids to aim with) and the
services they call, for tests/chaos/fuzzing.py."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2
from parley.media.v1 import media_pb2, references_pb2
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import messages_pb2 as mpb
from parley.presence.v1 import internal_pb2 as presence_internal_pb
from parley.presence.v1 import presence_pb2 as ppb
from parley.search.v1 import internal_pb2 as search_internal_pb
from parley.search.v1 import search_pb2
from parley_dev.stack import LocalStack
from tests.chaos.clients import Channels
from tests.helpers import Metadata
from tests.users import Device, direct, rid, send, unique_handle

ACCOUNT_SERVICE = kpb.DESCRIPTOR.services_by_name["AccountService"]
KEY_SERVICE = keys_pb2.DESCRIPTOR.services_by_name["KeyService"]
MESSAGE_SERVICE = mpb.DESCRIPTOR.services_by_name["MessageService"]
PRESENCE_SERVICE = ppb.DESCRIPTOR.services_by_name["PresenceService"]
# svc_media's questions to svc_message: called with the service credential,
# so the fuzz reaches past authentication into their checks.
MESSAGE_INTERNAL_SERVICE = ipb.DESCRIPTOR.services_by_name["MessageInternalService"]
PRESENCE_INTERNAL_SERVICE = presence_internal_pb.DESCRIPTOR.services_by_name[
    "PresenceInternalService"
]
SEARCH_SERVICE = search_pb2.DESCRIPTOR.services_by_name["SearchService"]
# svc_keys' erasure call to svc_search.
SEARCH_INTERNAL_SERVICE = search_internal_pb.DESCRIPTOR.services_by_name["SearchInternalService"]
SEARCH_SERVICES = (SEARCH_SERVICE, SEARCH_INTERNAL_SERVICE)
INTERNAL_SERVICES = (MESSAGE_INTERNAL_SERVICE, PRESENCE_INTERNAL_SERVICE, SEARCH_INTERNAL_SERVICE)
MEDIA_SERVICE = media_pb2.DESCRIPTOR.services_by_name["MediaService"]
# Called with the stack's operator and service credentials, so the fuzzer
# reaches their servicers (a user's token is refused before any field is read).
MEDIA_ADMIN_SERVICE = media_pb2.DESCRIPTOR.services_by_name["MediaAdminService"]
MEDIA_REFERENCE_SERVICE = references_pb2.DESCRIPTOR.services_by_name["MediaReferenceService"]
MEDIA_SERVICES = (MEDIA_SERVICE, MEDIA_ADMIN_SERVICE, MEDIA_REFERENCE_SERVICE)
# One request each: unary RPCs, and server streams (read to their first answer).
UNARY = [
    (service, method)
    for service in (
        ACCOUNT_SERVICE,
        KEY_SERVICE,
        MESSAGE_SERVICE,
        PRESENCE_SERVICE,
        MESSAGE_INTERNAL_SERVICE,
        PRESENCE_INTERNAL_SERVICE,
        *MEDIA_SERVICES,
        *SEARCH_SERVICES,
    )
    for method in service.methods
    if not method.client_streaming
]


@dataclass
class World:
    """Real accounts and ids for the fuzzer to aim with (and misuse)."""

    keys_target: str
    message_targets: list[str]
    presence_target: str
    media_target: str
    search_target: str
    operator_token: str
    service_token: str
    me: Device
    peer: Device
    conversation: str
    foreign_conversation: str
    message_ids: list[str]
    page_tokens: list[str]
    # Per service: larger requests are refused by gRPC itself with RESOURCE_EXHAUSTED.
    max_request_bytes: dict[str, int]
    # Where the caller's own sign-ups say they come from (see build_world).
    address: Callable[[], str] | None = None

    def ids(self) -> list[str]:
        return [
            self.conversation,
            self.foreign_conversation,
            *self.message_ids,
            self.me.account_id,
            self.peer.account_id,
            self.me.device_id,
            self.peer.device_id,
            self.conversation.upper(),
            self.conversation.replace("-", ""),
            self.conversation + "0",
            str(uuid.uuid4()),
            "00000000-0000-0000-0000-000000000000",
        ]


async def build_world(
    stack: LocalStack, *, sends: int = 4, address: Callable[[], str] | None = None
) -> World:
    """Four accounts: me, in a direct conversation with peer (``sends``
    messages of mine in it) and one with carol, who also talks to dave (the
    foreign conversation). Each conversation is opened by the other side, so
    none of my own budgets is spent but for the sends. ``address``: each
    sign-up's client address (x-forwarded-for), for stacks behind a trusted
    proxy whose sign-up limit per address would stop the set-up."""
    channels = Channels(stack.message_targets)
    try:
        async with grpc.aio.insecure_channel(stack.keys_target) as keys_channel:
            keys = kgrpc.AccountServiceStub(keys_channel)
            me, peer, carol, dave = [await sign_up_from(keys, address) for _ in range(4)]
            devices = await keys.ListDevices(kpb.ListDevicesRequest(page_size=1), metadata=me.md)
        stub = channels.stub(stack.message_targets[0])
        conversation = await direct(stub, peer, me)
        await direct(stub, carol, me)
        foreign = await direct(stub, dave, carol)
        sent = [await send(stub, me, conversation, f"m{i}".encode()) for i in range(sends)]
        await send(stub, carol, foreign, b"not for you")
        history = await stub.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation, page_size=1), metadata=me.md
        )
        inbox = await stub.ListConversations(
            mpb.ListConversationsRequest(page_size=1), metadata=me.md
        )
    finally:
        await channels.close()
    keys_limit = stack.settings.keys.server.max_receive_message_bytes
    return World(
        keys_target=stack.keys_target,
        message_targets=list(stack.message_targets),
        presence_target=stack.presence_target,
        media_target=stack.media_target,
        search_target=stack.search_target,
        operator_token=stack.operator_token,
        service_token=stack.service_token,
        me=me,
        peer=peer,
        conversation=conversation,
        foreign_conversation=foreign,
        message_ids=[m.message_id for m in sent],
        page_tokens=[
            history.next_page_token,
            inbox.next_page_token,
            devices.next_page_token,
        ],
        max_request_bytes={
            ACCOUNT_SERVICE.full_name: keys_limit,
            KEY_SERVICE.full_name: keys_limit,
            MESSAGE_SERVICE.full_name: stack.settings.message.receive_limit_bytes,
            MESSAGE_INTERNAL_SERVICE.full_name: stack.settings.message.receive_limit_bytes,
            PRESENCE_SERVICE.full_name: stack.settings.presence.server.max_receive_message_bytes,
            PRESENCE_INTERNAL_SERVICE.full_name: (
                stack.settings.presence.server.max_receive_message_bytes
            ),
            **{
                service.full_name: stack.settings.media.server.max_receive_message_bytes
                for service in MEDIA_SERVICES
            },
            **{
                service.full_name: stack.settings.search.server.max_receive_message_bytes
                for service in SEARCH_SERVICES
            },
        },
        address=address,
    )


def forwarded_for(address: Callable[[], str] | None) -> Metadata:
    return () if address is None else (("x-forwarded-for", address()),)


async def sign_up_from(keys: kgrpc.AccountServiceStub, address: Callable[[], str] | None) -> Device:
    handle = unique_handle()
    reply = await keys.SignUp(
        kpb.SignUpRequest(
            request_id=rid(),
            handle=handle,
            display_name=handle.title(),
            device=kpb.NewDevice(name="phone", platform=1),
        ),
        metadata=forwarded_for(address),
    )
    return Device(
        account_id=reply.account.account_id,
        device_id=reply.device.device_id,
        access_token=reply.credentials.access_token,
        refresh_token=reply.credentials.refresh_token,
        handle=handle,
    )
