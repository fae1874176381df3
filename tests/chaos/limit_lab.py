"""The stack, clients and vocabulary of tests/chaos/test_limit_matrix.py:
limits with a burst of one or two (TINY_LIMITS), a Lab that makes accounts
(each from an address of its own) and conversations, and the Probe each case
of tests/chaos/limit_cases.py returns.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2 as keypb
from parley.keys.v1 import keys_pb2_grpc as keygrpc
from parley.media.v1 import media_pb2_grpc as mediagrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley.search.v1 import search_pb2_grpc as sgrpc
from parley_core.limits import LimitName
from parley_dev.stack import LocalStack
from tests.helpers import Metadata, auth
from tests.users import Device, rid, unique_handle

# Refilled once a minute: no bucket regains a token while a case runs.
PER_MINUTE = 1
# Sign-ups the set-up of every case may use before signup_overall is exhausted.
SIGNUPS = 150
# Every limit a burst of one, but two where a case must tell two limits of one
# call apart (the other limit of that call, burst one, must refuse first), and
# two device registrations for the three devices of the send_per_account case.
TINY_LIMITS: dict[str, Any] = {
    "trusted_proxies": ["127.0.0.1/32"],
    **{name.value: {"burst": 1, "per_minute": PER_MINUTE} for name in LimitName},
    "signup_overall": {"burst": SIGNUPS, "per_minute": PER_MINUTE},
    "send_per_account": {"burst": 2, "per_minute": PER_MINUTE},
    "bundle_fetch_per_requester": {"burst": 2, "per_minute": PER_MINUTE},
    "device_register_per_account": {"burst": 2, "per_minute": PER_MINUTE},
}
# Calls a case makes before its limit must have refused.
MAX_ATTEMPTS = 5
CALL_TIMEOUT = 10.0
BAD_TOKEN = auth("not.a.jwt")

# A call given metadata, or with None its case's own caller's.
Call = Callable[[Metadata | None], Awaitable[Any]]


_addresses = itertools.count(1)


def fresh_address() -> str:
    n = next(_addresses)
    return f"198.18.{n // 250}.{n % 250 + 1}"  # RFC 2544's benchmarking block


def raw(public_key: Any) -> bytes:
    return bytes(public_key.public_bytes(Encoding.Raw, PublicFormat.Raw))


def publish_request() -> keypb.PublishKeysRequest:
    identity = Ed25519PrivateKey.generate()
    public = raw(X25519PrivateKey.generate().public_key())
    return keypb.PublishKeysRequest(
        identity_key=raw(identity.public_key()),
        signed_pre_key=keypb.SignedPreKey(
            key_id=1, public_key=public, signature=identity.sign(b"\x05" + public)
        ),
    )


class Lab:
    """Stubs on the tiny stack, and fresh accounts and conversations made
    without spending the budgets a case is about."""

    def __init__(self, stack: LocalStack) -> None:
        self.stack = stack
        self._channels = [
            grpc.aio.insecure_channel(t)
            for t in (
                stack.keys_target,
                stack.message_targets[0],
                stack.presence_target,
                stack.media_target,
                stack.search_target,
            )
        ]
        self.accounts = kgrpc.AccountServiceStub(self._channels[0])
        self.keys = keygrpc.KeyServiceStub(self._channels[0])
        self.messages = mgrpc.MessageServiceStub(self._channels[1])
        self.presence = pgrpc.PresenceServiceStub(self._channels[2])
        self.media = mediagrpc.MediaServiceStub(self._channels[3])
        self.search = sgrpc.SearchServiceStub(self._channels[4])

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    async def account(self) -> Device:
        handle = unique_handle("tiny")
        reply = await self.accounts.SignUp(
            signup(handle), metadata=(("x-forwarded-for", fresh_address()),), timeout=CALL_TIMEOUT
        )
        return Device(
            reply.account.account_id,
            reply.device.device_id,
            reply.credentials.access_token,
            reply.credentials.refresh_token,
            handle,
        )

    async def accounts_(self, count: int) -> list[Device]:
        return list(await asyncio.gather(*(self.account() for _ in range(count))))

    async def link(self, owner: Device) -> Device:
        reply = await self.accounts.RegisterDevice(
            kpb.RegisterDeviceRequest(
                request_id=rid(), device=kpb.NewDevice(name="tab", platform=4)
            ),
            metadata=owner.md,
            timeout=CALL_TIMEOUT,
        )
        c = reply.credentials
        return Device(owner.account_id, reply.device.device_id, c.access_token, "", owner.handle)

    async def direct(self, a: Device, b: Device) -> str:
        view = await self.messages.CreateDirectConversation(
            mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=b.account_id),
            metadata=a.md,
            timeout=CALL_TIMEOUT,
        )
        return str(view.conversation.conversation_id)

    async def group(self, owner: Device, members: list[Device], *, channel: bool = False) -> str:
        if channel:
            view = await self.messages.CreateChannel(
                mpb.CreateChannelRequest(request_id=rid(), title="c", public=True),
                metadata=owner.md,
                timeout=CALL_TIMEOUT,
            )
        else:
            view = await self.messages.CreateGroup(
                mpb.CreateGroupRequest(
                    request_id=rid(), title="g", member_account_ids=[m.account_id for m in members]
                ),
                metadata=owner.md,
                timeout=CALL_TIMEOUT,
            )
        return str(view.conversation.conversation_id)

    async def send(self, device: Device, conversation: str) -> mpb.Message:
        reply = await self.messages.SendMessage(send_request(conversation), metadata=device.md)
        return reply.message

    async def foreign(self) -> tuple[str, str]:
        """A conversation (and a message of it) the cases' callers are not in."""
        x, y = await self.accounts_(2)
        conversation = await self.direct(x, y)
        return conversation, (await self.send(x, conversation)).message_id

    async def foreign_group(self) -> str:
        x, y = await self.accounts_(2)
        return await self.group(x, [y])


def signup(handle: str | None = None) -> kpb.SignUpRequest:
    return kpb.SignUpRequest(
        request_id=rid(),
        handle=handle or unique_handle("tiny"),
        device=kpb.NewDevice(name="phone", platform=1),
    )


def send_request(conversation: str) -> mpb.SendMessageRequest:
    return mpb.SendMessageRequest(
        request_id=rid(), conversation_id=conversation, type=mpb.MESSAGE_TYPE_TEXT, body=b"hi"
    )


@dataclass
class Probe:
    """One case: ``call`` makes the caller's next request (a fresh valid one
    each time); ``foreign`` the same request aimed at a conversation the
    caller is not in; ``invalid`` one the servicer rejects."""

    caller: Device | None
    call: Call
    foreign: Call | None = None
    invalid: Call | None = None


def own(device: Device, md: Metadata | None) -> Metadata:
    return device.md if md is None else md
