"""The calls of the auth matrix (tests/chaos/test_auth_matrix.py): one per
authenticated RPC, each aimed at the victim's real data, and the sets of RPCs
the matrix covers."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.keys.v1 import keys_pb2 as keypb
from parley.keys.v1 import keys_pb2_grpc as keygrpc
from parley.media.v1 import media_pb2
from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.presence.v1 import internal_pb2 as pinternal_pb
from parley.presence.v1 import presence_pb2 as ppb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley.search.v1 import search_pb2 as spb
from tests.chaos.export_calls import EXPORT_RPCS
from tests.helpers import Metadata
from tests.users import Device, rid

Call = Callable[[Metadata], Awaitable[Any]]


def reason_of(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, f"no google.rpc.Status details in {error}"
    for detail in status.details:
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            assert info.domain == "parley.dev"
            return info.reason
    raise AssertionError(f"no ErrorInfo in {error}")


@dataclass
class Victim:
    alice: Device
    bob: Device
    laptop: Device  # alice's second device, revoked
    conversation: str
    message_ids: list[str]
    page_token: str


async def refused(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError(f"the call succeeded and returned {reply!r:.300}")


def unary_calls(
    keys: kgrpc.AccountServiceStub, messages: mgrpc.MessageServiceStub, v: Victim
) -> dict[str, Call]:
    """Every authenticated unary RPC, each aimed at the victim's data."""
    conversation = v.conversation
    return {
        "RegisterDevice": lambda md: keys.RegisterDevice(
            kpb.RegisterDeviceRequest(request_id=rid(), device=kpb.NewDevice(name="x", platform=1)),
            metadata=md,
        ),
        "RevokeDevice": lambda md: keys.RevokeDevice(
            kpb.RevokeDeviceRequest(request_id=rid(), device_id=v.alice.device_id), metadata=md
        ),
        "ListDevices": lambda md: keys.ListDevices(kpb.ListDevicesRequest(), metadata=md),
        "GetAccount": lambda md: keys.GetAccount(kpb.GetAccountRequest(), metadata=md),
        # Confirmed with the victim's handle: a credential that passed as
        # hers would erase her account.
        "DeleteAccount": lambda md: keys.DeleteAccount(
            kpb.DeleteAccountRequest(request_id=rid(), confirm_handle=v.alice.handle),
            metadata=md,
        ),
        "CreateDirectConversation": lambda md: messages.CreateDirectConversation(
            mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=v.bob.account_id),
            metadata=md,
        ),
        "GetConversation": lambda md: messages.GetConversation(
            mpb.GetConversationRequest(conversation_id=conversation), metadata=md
        ),
        "ListConversations": lambda md: messages.ListConversations(
            mpb.ListConversationsRequest(), metadata=md
        ),
        "SendMessage": lambda md: messages.SendMessage(
            mpb.SendMessageRequest(
                request_id=rid(), conversation_id=conversation, type=1, body=b"intruder"
            ),
            metadata=md,
        ),
        "ListMessages": lambda md: messages.ListMessages(
            mpb.ListMessagesRequest(conversation_id=conversation), metadata=md
        ),
        "MarkDelivered": lambda md: messages.MarkDelivered(
            mpb.MarkDeliveredRequest(request_id=rid(), conversation_id=conversation, seq=3),
            metadata=md,
        ),
        "MarkRead": lambda md: messages.MarkRead(
            mpb.MarkReadRequest(request_id=rid(), conversation_id=conversation, seq=3),
            metadata=md,
        ),
        **change_calls(messages, v),
        **membership_calls(messages, v),
        **push_calls(messages),
    }


def key_calls(key_service: keygrpc.KeyServiceStub, v: Victim) -> dict[str, Call]:
    """The key directory, aimed at the victim's keys."""
    signed = keypb.SignedPreKey(key_id=1, public_key=b"\x01" * 32, signature=b"\x02" * 64)
    return {
        "PublishKeys": lambda md: key_service.PublishKeys(
            keypb.PublishKeysRequest(identity_key=b"\x03" * 32, signed_pre_key=signed),
            metadata=md,
        ),
        "UploadPreKeys": lambda md: key_service.UploadPreKeys(
            keypb.UploadPreKeysRequest(
                pre_keys=[keypb.OneTimePreKey(key_id=1, public_key=b"\x04" * 32)]
            ),
            metadata=md,
        ),
        "GetPreKeyBundles": lambda md: key_service.GetPreKeyBundles(
            keypb.GetPreKeyBundlesRequest(account_id=v.alice.account_id), metadata=md
        ),
        "GetPreKeyCount": lambda md: key_service.GetPreKeyCount(
            keypb.GetPreKeyCountRequest(), metadata=md
        ),
        "GetDeviceKeys": lambda md: key_service.GetDeviceKeys(
            keypb.GetDeviceKeysRequest(account_ids=[v.alice.account_id]), metadata=md
        ),
        "SendSenderKeys": lambda md: key_service.SendSenderKeys(
            keypb.SendSenderKeysRequest(
                request_id=rid(),
                conversation_id=v.conversation,
                envelopes=[
                    keypb.SenderKeyEnvelope(
                        recipient_account_id=v.alice.account_id,
                        recipient_device_id=v.alice.device_id,
                        ciphertext=b"intruder",
                    )
                ],
            ),
            metadata=md,
        ),
        "ClaimSenderKeys": lambda md: key_service.ClaimSenderKeys(
            keypb.ClaimSenderKeysRequest(), metadata=md
        ),
    }


def push_calls(messages: mgrpc.MessageServiceStub) -> dict[str, Call]:
    """Push registration and settings: always the caller's own device and account."""
    dnd = mpb.DoNotDisturb(enabled=True, start_minute=0, end_minute=1439, time_zone="UTC")
    return {
        "RegisterPushToken": lambda md: messages.RegisterPushToken(
            mpb.RegisterPushTokenRequest(provider=mpb.PUSH_PROVIDER_WEBHOOK, token="intruder"),
            metadata=md,
        ),
        "RemovePushToken": lambda md: messages.RemovePushToken(
            mpb.RemovePushTokenRequest(), metadata=md
        ),
        "GetPushSettings": lambda md: messages.GetPushSettings(
            mpb.GetPushSettingsRequest(), metadata=md
        ),
        "UpdatePushSettings": lambda md: messages.UpdatePushSettings(
            mpb.UpdatePushSettingsRequest(do_not_disturb=dnd), metadata=md
        ),
    }


def presence_calls(presence: pgrpc.PresenceServiceStub, v: Victim) -> dict[str, Call]:
    """Every presence RPC, aimed at the victim (SubscribePresence read to its first event)."""
    victim = [v.alice.account_id]

    async def subscribe(md: Metadata) -> Any:
        call = presence.SubscribePresence(
            ppb.SubscribePresenceRequest(account_ids=victim), metadata=md, timeout=10
        )
        try:
            async for event in call:
                return event
        finally:
            call.cancel()
        return None

    return {
        "Heartbeat": lambda md: presence.Heartbeat(ppb.HeartbeatRequest(), metadata=md),
        "GoOffline": lambda md: presence.GoOffline(ppb.GoOfflineRequest(), metadata=md),
        "GetPresence": lambda md: presence.GetPresence(
            ppb.GetPresenceRequest(account_ids=victim), metadata=md
        ),
        "SubscribePresence": subscribe,
        "GetPresenceSettings": lambda md: presence.GetPresenceSettings(
            ppb.GetPresenceSettingsRequest(), metadata=md
        ),
        "UpdatePresenceSettings": lambda md: presence.UpdatePresenceSettings(
            ppb.UpdatePresenceSettingsRequest(online=ppb.VISIBILITY_EVERYONE), metadata=md
        ),
        "AddContacts": lambda md: presence.AddContacts(
            ppb.AddContactsRequest(account_ids=victim), metadata=md
        ),
        "RemoveContacts": lambda md: presence.RemoveContacts(
            ppb.RemoveContactsRequest(account_ids=victim), metadata=md
        ),
        "ListContacts": lambda md: presence.ListContacts(ppb.ListContactsRequest(), metadata=md),
    }


def change_calls(messages: mgrpc.MessageServiceStub, v: Victim) -> dict[str, Call]:
    """The RPCs that change or inspect the victim's messages and settings."""
    target = {"conversation_id": v.conversation, "message_id": v.message_ids[0]}
    conversation = {"conversation_id": v.conversation}
    return {
        "EditMessage": lambda md: messages.EditMessage(
            mpb.EditMessageRequest(request_id=rid(), body=b"x", **target), metadata=md
        ),
        "DeleteMessage": lambda md: messages.DeleteMessage(
            mpb.DeleteMessageRequest(
                request_id=rid(), scope=mpb.DELETE_SCOPE_FOR_EVERYONE, **target
            ),
            metadata=md,
        ),
        "ReactToMessage": lambda md: messages.ReactToMessage(
            mpb.ReactToMessageRequest(request_id=rid(), emoji="\U0001f600", **target),
            metadata=md,
        ),
        "ListReactions": lambda md: messages.ListReactions(
            mpb.ListReactionsRequest(**target), metadata=md
        ),
        "ListMessageReceipts": lambda md: messages.ListMessageReceipts(
            mpb.ListMessageReceiptsRequest(seq=1, **conversation), metadata=md
        ),
        "SetMuted": lambda md: messages.SetMuted(
            mpb.SetMutedRequest(request_id=rid(), forever=True, **conversation), metadata=md
        ),
        "SetPinned": lambda md: messages.SetPinned(
            mpb.SetPinnedRequest(request_id=rid(), pinned=True, **conversation), metadata=md
        ),
        "SetArchived": lambda md: messages.SetArchived(
            mpb.SetArchivedRequest(request_id=rid(), archived=True, **conversation), metadata=md
        ),
        "MarkUnread": lambda md: messages.MarkUnread(
            mpb.MarkUnreadRequest(request_id=rid(), **conversation), metadata=md
        ),
    }


def membership_calls(messages: mgrpc.MessageServiceStub, v: Victim) -> dict[str, Call]:
    """The group and channel RPCs, aimed at the victim's conversation."""
    conversation = {"conversation_id": v.conversation}
    return {
        "CreateGroup": lambda md: messages.CreateGroup(
            mpb.CreateGroupRequest(
                request_id=rid(), title="g", member_account_ids=[v.bob.account_id]
            ),
            metadata=md,
        ),
        "CreateChannel": lambda md: messages.CreateChannel(
            mpb.CreateChannelRequest(request_id=rid(), title="c", public=True), metadata=md
        ),
        "UpdateConversationInfo": lambda md: messages.UpdateConversationInfo(
            mpb.UpdateConversationInfoRequest(request_id=rid(), title="t", **conversation),
            metadata=md,
        ),
        "SetServerSearch": lambda md: messages.SetServerSearch(
            mpb.SetServerSearchRequest(request_id=rid(), enabled=True, **conversation), metadata=md
        ),
        "AddMembers": lambda md: messages.AddMembers(
            mpb.AddMembersRequest(
                request_id=rid(), account_ids=[v.alice.account_id], **conversation
            ),
            metadata=md,
        ),
        "RemoveMember": lambda md: messages.RemoveMember(
            mpb.RemoveMemberRequest(request_id=rid(), account_id=v.bob.account_id, **conversation),
            metadata=md,
        ),
        "LeaveConversation": lambda md: messages.LeaveConversation(
            mpb.LeaveConversationRequest(request_id=rid(), **conversation), metadata=md
        ),
        "SetMemberRole": lambda md: messages.SetMemberRole(
            mpb.SetMemberRoleRequest(
                request_id=rid(),
                account_id=v.bob.account_id,
                role=mpb.ROLE_ADMIN,
                **conversation,
            ),
            metadata=md,
        ),
        "SubscribeChannel": lambda md: messages.SubscribeChannel(
            mpb.SubscribeChannelRequest(request_id=rid(), **conversation), metadata=md
        ),
        "ListMembers": lambda md: messages.ListMembers(
            mpb.ListMembersRequest(**conversation), metadata=md
        ),
    }


AUTHENTICATED = {
    m.name
    for service in (
        kpb.DESCRIPTOR.services_by_name["AccountService"],
        keypb.DESCRIPTOR.services_by_name["KeyService"],
        mpb.DESCRIPTOR.services_by_name["MessageService"],
    )
    for m in service.methods
    # The history export RPCs have a matrix of their own (test_export_auth.py).
} - {"SignUp", "RefreshToken", *EXPORT_RPCS}


PRESENCE_RPCS = {m.name for m in ppb.DESCRIPTOR.services_by_name["PresenceService"].methods}
# Called by other services with the deployment's service credential only.
INTERNAL_RPCS = {m.name for m in ipb.DESCRIPTOR.services_by_name["MessageInternalService"].methods}
PRESENCE_INTERNAL_RPCS = {
    m.name for m in pinternal_pb.DESCRIPTOR.services_by_name["PresenceInternalService"].methods
}
MEDIA_RPCS = {m.name for m in media_pb2.DESCRIPTOR.services_by_name["MediaService"].methods}
SEARCH_RPCS = {m.name for m in spb.DESCRIPTOR.services_by_name["SearchService"].methods}
