"""The cases of tests/chaos/test_limit_matrix.py: for each (limit, RPC) pair
of the abuse-limits table, a caller and fresh valid requests that spend that
limit and no other (TINY_LIMITS), plus, where the RPC has them, the same
caller's request aimed at a conversation it is not in and a request the
servicer rejects.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import keys_pb2 as keypb
from parley.media.v1 import media_pb2 as mediapb
from parley.message.v1 import messages_pb2 as mpb
from parley.presence.v1 import presence_pb2 as ppb
from tests.chaos.limit_lab import (
    CALL_TIMEOUT,
    MAX_ATTEMPTS,
    Call,
    Lab,
    Probe,
    fresh_address,
    own,
    publish_request,
    raw,
    send_request,
    signup,
)
from tests.helpers import Metadata
from tests.media_world import Blob, send
from tests.users import Device, rid

Case = Callable[[Lab], Awaitable[Probe]]


# -- svc_keys ---------------------------------------------------------------------------


async def signup_per_address(lab: Lab) -> Probe:
    address = (("x-forwarded-for", fresh_address()),)

    async def call(md: Metadata | None) -> Any:
        return await lab.accounts.SignUp(signup(), metadata=address)

    async def invalid(md: Metadata | None) -> Any:
        return await lab.accounts.SignUp(signup(handle="1 is no handle"), metadata=address)

    return Probe(None, call, invalid=invalid)


def refresher(lab: Lab, device: Device, address: str | None) -> Call:
    token = [device.refresh_token]

    async def call(md: Metadata | None) -> Any:
        reply = await lab.accounts.RefreshToken(
            kpb.RefreshTokenRequest(request_id=rid(), refresh_token=token[0]),
            metadata=(("x-forwarded-for", address or fresh_address()),),
        )
        token[0] = reply.credentials.refresh_token
        return reply

    return call


async def refresh_per_device(lab: Lab) -> Probe:
    device = await lab.account()

    async def invalid(md: Metadata | None) -> Any:
        request = kpb.RefreshTokenRequest(request_id="x", refresh_token=device.refresh_token)
        return await lab.accounts.RefreshToken(request)

    # From a fresh address each time: only the device's bucket runs dry.
    return Probe(None, refresher(lab, device, None), invalid=invalid)


async def refresh_per_address(lab: Lab) -> Probe:
    address = fresh_address()
    devices = iter(await lab.accounts_(MAX_ATTEMPTS))

    async def call(md: Metadata | None) -> Any:
        # Another device each time: only the address's bucket runs dry.
        return await refresher(lab, next(devices), address)(md)

    return Probe(None, call)


async def register_device(lab: Lab) -> Probe:
    owner = await lab.account()

    def request(request_id: str) -> kpb.RegisterDeviceRequest:
        return kpb.RegisterDeviceRequest(
            request_id=request_id, device=kpb.NewDevice(name="tab", platform=4)
        )

    async def call(md: Metadata | None) -> Any:
        return await lab.accounts.RegisterDevice(request(rid()), metadata=own(owner, md))

    async def invalid(md: Metadata | None) -> Any:
        return await lab.accounts.RegisterDevice(request("x"), metadata=own(owner, md))

    return Probe(owner, call, invalid=invalid)


async def publish_keys(lab: Lab) -> Probe:
    device = await lab.account()

    async def call(md: Metadata | None) -> Any:
        return await lab.keys.PublishKeys(publish_request(), metadata=own(device, md))

    async def invalid(md: Metadata | None) -> Any:
        request = publish_request()
        request.signed_pre_key.signature = b"\x00" * 64
        return await lab.keys.PublishKeys(request, metadata=own(device, md))

    return Probe(device, call, invalid=invalid)


async def upload_pre_keys(lab: Lab) -> Probe:
    device = await lab.account()
    # PublishKeys spends the token UploadPreKeys shares with it: the first
    # upload is already refused.
    await lab.keys.PublishKeys(publish_request(), metadata=device.md)
    ids = itertools.count(1)

    async def call(md: Metadata | None) -> Any:
        public = raw(X25519PrivateKey.generate().public_key())
        request = keypb.UploadPreKeysRequest(
            pre_keys=[keypb.OneTimePreKey(key_id=next(ids), public_key=public)]
        )
        return await lab.keys.UploadPreKeys(request, metadata=own(device, md))

    return Probe(device, call)


async def send_sender_keys(lab: Lab) -> Probe:
    sender, recipient = await lab.accounts_(2)
    await lab.keys.PublishKeys(publish_request(), metadata=recipient.md)
    conversation = await lab.direct(sender, recipient)

    async def call(md: Metadata | None) -> Any:
        envelope = keypb.SenderKeyEnvelope(
            recipient_account_id=recipient.account_id,
            recipient_device_id=recipient.device_id,
            ciphertext=b"sealed",
        )
        request = keypb.SendSenderKeysRequest(
            request_id=rid(), conversation_id=conversation, envelopes=[envelope]
        )
        return await lab.keys.SendSenderKeys(request, metadata=own(sender, md))

    return Probe(sender, call)


async def bundles_per_target(lab: Lab) -> Probe:
    requester, target = await lab.accounts_(2)

    async def call(md: Metadata | None) -> Any:
        request = keypb.GetPreKeyBundlesRequest(account_id=target.account_id)
        return await lab.keys.GetPreKeyBundles(request, metadata=own(requester, md))

    return Probe(requester, call)


async def bundles_per_requester(lab: Lab) -> Probe:
    requester, *targets = await lab.accounts_(1 + MAX_ATTEMPTS)
    each = iter(targets)

    async def call(md: Metadata | None) -> Any:
        # Another target each time: only the requester's own bucket runs dry.
        request = keypb.GetPreKeyBundlesRequest(account_id=next(each).account_id)
        return await lab.keys.GetPreKeyBundles(request, metadata=own(requester, md))

    return Probe(requester, call)


# -- svc_message: sends -----------------------------------------------------------------


async def sends(lab: Lab, conversation: str, senders: list[Device]) -> Probe:
    """Sends to ``conversation`` by each of ``senders`` in turn (the last one
    again and again)."""
    foreign, _message = await lab.foreign()
    turn = iter(senders)
    last = [senders[0]]

    def sender(md: Metadata | None) -> Metadata:
        if md is not None:
            return md
        last[0] = next(turn, last[0])
        return last[0].md

    async def call(md: Metadata | None) -> Any:
        return await lab.messages.SendMessage(send_request(conversation), metadata=sender(md))

    async def aimed_elsewhere(md: Metadata | None) -> Any:
        return await lab.messages.SendMessage(send_request(foreign), metadata=sender(md))

    async def invalid(md: Metadata | None) -> Any:
        request = send_request(conversation)
        request.type = 999
        return await lab.messages.SendMessage(request, metadata=sender(md))

    return Probe(senders[0], call, aimed_elsewhere, invalid)


async def send_per_device(lab: Lab) -> Probe:
    a, b = await lab.accounts_(2)
    return await sends(lab, await lab.direct(a, b), [a])


async def send_per_account(lab: Lab) -> Probe:
    # Another device of the account each time: only the account's bucket runs dry.
    a, b = await lab.accounts_(2)
    devices = [a, await lab.link(a), await lab.link(a)]
    return await sends(lab, await lab.direct(a, b), devices)


async def send_per_conversation(lab: Lab) -> Probe:
    # Another member each time: only the group's bucket runs dry.
    owner, *members = await lab.accounts_(1 + MAX_ATTEMPTS)
    return await sends(lab, await lab.group(owner, members), [owner, *members])


# -- svc_message: changes, conversations, push ------------------------------------------

Change = Callable[[str, str, Metadata], Awaitable[Any]]


async def feed_change(lab: Lab, change: Change, *, both_send: bool = False) -> Probe:
    """``change(conversation, message_id, metadata)`` by a caller who sent a
    message to a direct conversation (and whose peer sent one too)."""
    a, b = await lab.accounts_(2)
    conversation = await lab.direct(a, b)
    sent = [await lab.send(x, conversation) for x in ((a, b) if both_send else (a,))]
    targets = itertools.cycle(m.message_id for m in sent)
    foreign, foreign_message = await lab.foreign()
    return Probe(
        a,
        lambda md: change(conversation, next(targets), own(a, md)),
        foreign=lambda md: change(foreign, foreign_message, own(a, md)),
        invalid=lambda md: change(conversation, "no id", own(a, md)),
    )


async def edit_message(lab: Lab) -> Probe:
    def change(conversation: str, message: str, md: Metadata) -> Awaitable[Any]:
        return lab.messages.EditMessage(
            mpb.EditMessageRequest(
                request_id=rid(), conversation_id=conversation, message_id=message, body=b"x"
            ),
            metadata=md,
        )

    return await feed_change(lab, change)


async def delete_message(lab: Lab) -> Probe:
    def change(conversation: str, message: str, md: Metadata) -> Awaitable[Any]:
        return lab.messages.DeleteMessage(
            mpb.DeleteMessageRequest(
                request_id=rid(),
                conversation_id=conversation,
                message_id=message,
                scope=mpb.DELETE_SCOPE_FOR_ME,
            ),
            metadata=md,
        )

    return await feed_change(lab, change, both_send=True)


async def react_to_message(lab: Lab) -> Probe:
    emoji = itertools.cycle(["\U0001f600", "\U0001f44d", "\u2764\ufe0f"])

    def change(conversation: str, message: str, md: Metadata) -> Awaitable[Any]:
        return lab.messages.ReactToMessage(
            mpb.ReactToMessageRequest(
                request_id=rid(),
                conversation_id=conversation,
                message_id=message,
                emoji=next(emoji),
            ),
            metadata=md,
        )

    return await feed_change(lab, change)


async def create_direct(lab: Lab) -> Probe:
    caller, *peers = await lab.accounts_(1 + MAX_ATTEMPTS)
    each = iter(peers)

    def request(peer: str) -> mpb.CreateDirectConversationRequest:
        return mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=peer)

    async def call(md: Metadata | None) -> Any:
        # A new pair each time: opening an existing chat spends nothing.
        return await lab.messages.CreateDirectConversation(
            request(next(each).account_id), metadata=own(caller, md)
        )

    async def invalid(md: Metadata | None) -> Any:
        return await lab.messages.CreateDirectConversation(
            request("no id"), metadata=own(caller, md)
        )

    return Probe(caller, call, invalid=invalid)


async def create_group(lab: Lab) -> Probe:
    owner, member = await lab.accounts_(2)

    def request(members: list[str]) -> mpb.CreateGroupRequest:
        return mpb.CreateGroupRequest(request_id=rid(), title="g", member_account_ids=members)

    return Probe(
        owner,
        lambda md: lab.messages.CreateGroup(request([member.account_id]), metadata=own(owner, md)),
        invalid=lambda md: lab.messages.CreateGroup(request(["no id"]), metadata=own(owner, md)),
    )


async def create_channel(lab: Lab) -> Probe:
    owner = await lab.account()

    def request(title: str) -> mpb.CreateChannelRequest:
        return mpb.CreateChannelRequest(request_id=rid(), title=title, public=True)

    return Probe(
        owner,
        lambda md: lab.messages.CreateChannel(request("c"), metadata=own(owner, md)),
        invalid=lambda md: lab.messages.CreateChannel(
            request("c" * 10_000), metadata=own(owner, md)
        ),
    )


Admin = Callable[[str, Device, Metadata], Awaitable[Any]]


async def group_admin(lab: Lab, change: Admin, *, members_in_group: bool = True) -> Probe:
    """``change(group, member, metadata)`` by a group's owner, about another
    of the group's members each time (or, to add, another account)."""
    owner, first, *members = await lab.accounts_(2 + MAX_ATTEMPTS)
    group = await lab.group(owner, [first, *members] if members_in_group else [first])
    foreign = await lab.foreign_group()
    each = iter(members)
    return Probe(
        owner,
        lambda md: change(group, next(each), own(owner, md)),
        foreign=lambda md: change(foreign, first, own(owner, md)),
        invalid=lambda md: change("no id", first, own(owner, md)),
    )


async def add_members(lab: Lab) -> Probe:
    def change(group: str, member: Device, md: Metadata) -> Awaitable[Any]:
        return lab.messages.AddMembers(
            mpb.AddMembersRequest(
                request_id=rid(), conversation_id=group, account_ids=[member.account_id]
            ),
            metadata=md,
        )

    return await group_admin(lab, change, members_in_group=False)


async def update_info(lab: Lab) -> Probe:
    titles = (f"title {n}" for n in itertools.count())

    def change(group: str, member: Device, md: Metadata) -> Awaitable[Any]:
        return lab.messages.UpdateConversationInfo(
            mpb.UpdateConversationInfoRequest(
                request_id=rid(), conversation_id=group, title=next(titles)
            ),
            metadata=md,
        )

    return await group_admin(lab, change)


async def remove_member(lab: Lab) -> Probe:
    def change(group: str, member: Device, md: Metadata) -> Awaitable[Any]:
        return lab.messages.RemoveMember(
            mpb.RemoveMemberRequest(
                request_id=rid(), conversation_id=group, account_id=member.account_id
            ),
            metadata=md,
        )

    return await group_admin(lab, change)


async def set_member_role(lab: Lab) -> Probe:
    def change(group: str, member: Device, md: Metadata) -> Awaitable[Any]:
        return lab.messages.SetMemberRole(
            mpb.SetMemberRoleRequest(
                request_id=rid(),
                conversation_id=group,
                account_id=member.account_id,
                role=mpb.ROLE_ADMIN,
            ),
            metadata=md,
        )

    return await group_admin(lab, change)


async def subscribe_channel(lab: Lab) -> Probe:
    caller, private_owner, *owners = await lab.accounts_(2 + MAX_ATTEMPTS)
    channels = iter([await lab.group(owner, [], channel=True) for owner in owners])
    private = await lab.messages.CreateChannel(
        mpb.CreateChannelRequest(request_id=rid(), title="p", public=False),
        metadata=private_owner.md,
    )

    def subscribe(channel: str, md: Metadata) -> Awaitable[Any]:
        return lab.messages.SubscribeChannel(
            mpb.SubscribeChannelRequest(request_id=rid(), conversation_id=channel), metadata=md
        )

    return Probe(
        caller,
        lambda md: subscribe(next(channels), own(caller, md)),
        foreign=lambda md: subscribe(private.conversation.conversation_id, own(caller, md)),
        invalid=lambda md: subscribe("no id", own(caller, md)),
    )


async def register_push_token(lab: Lab) -> Probe:
    device = await lab.account()
    tokens = (f"https://push.invalid/{n}" for n in itertools.count())

    def register(provider: int, md: Metadata) -> Awaitable[Any]:
        return lab.messages.RegisterPushToken(
            mpb.RegisterPushTokenRequest(provider=provider, token=next(tokens)), metadata=md
        )

    return Probe(
        device,
        lambda md: register(mpb.PUSH_PROVIDER_WEBHOOK, own(device, md)),
        invalid=lambda md: register(999, own(device, md)),
    )


async def remove_push_token(lab: Lab) -> Probe:
    device = await lab.account()
    return Probe(
        device,
        lambda md: lab.messages.RemovePushToken(
            mpb.RemovePushTokenRequest(), metadata=own(device, md)
        ),
    )


# -- svc_presence -----------------------------------------------------------------------


async def add_contacts(lab: Lab) -> Probe:
    owner, contact = await lab.accounts_(2)

    def add(account_id: str, md: Metadata) -> Awaitable[Any]:
        return lab.presence.AddContacts(
            ppb.AddContactsRequest(account_ids=[account_id]), metadata=md
        )

    return Probe(
        owner,
        lambda md: add(contact.account_id, own(owner, md)),
        invalid=lambda md: add("no id", own(owner, md)),
    )


async def subscribe_presence(lab: Lab) -> Probe:
    viewer, target = await lab.accounts_(2)

    async def subscribe(account_id: str, md: Metadata) -> Any:
        """The subscription's first event (its snapshot); then it is closed."""
        call = lab.presence.SubscribePresence(
            ppb.SubscribePresenceRequest(account_ids=[account_id]),
            metadata=md,
            timeout=CALL_TIMEOUT,
        )
        try:
            async for event in call:
                return event
        finally:
            call.cancel()
        return None

    return Probe(
        viewer,
        lambda md: subscribe(target.account_id, own(viewer, md)),
        invalid=lambda md: subscribe("no id", own(viewer, md)),
    )


# -- svc_media ---------------------------------------------------------------------------


async def create_upload(lab: Lab) -> Probe:
    uploader = await lab.account()

    async def call(md: Metadata | None) -> Any:
        return await lab.media.CreateUpload(Blob.random(64).request(), metadata=own(uploader, md))

    async def invalid(md: Metadata | None) -> Any:
        request = Blob.random(64).request()
        request.sha256 = b"short"
        return await lab.media.CreateUpload(request, metadata=own(uploader, md))

    return Probe(uploader, call, invalid=invalid)


async def get_download(lab: Lab) -> Probe:
    uploader = await lab.account()
    blob = Blob.random(64)
    # One upload: CreateUpload spends the uploader's only upload token.
    created = await lab.media.CreateUpload(blob.request(), metadata=uploader.md)
    assert (await send(created.upload.put, blob.data)).status_code == 200
    await lab.media.CompleteUpload(
        mediapb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=uploader.md
    )

    async def call(md: Metadata | None) -> Any:
        return await lab.media.GetDownload(
            mediapb.GetDownloadRequest(media_id=blob.media_id), metadata=own(uploader, md)
        )

    async def elsewhere(md: Metadata | None) -> Any:
        # Media the caller may not read (none by that id): denied before the limit.
        return await lab.media.GetDownload(
            mediapb.GetDownloadRequest(media_id=Blob.random(8).media_id),
            metadata=own(uploader, md),
        )

    async def invalid(md: Metadata | None) -> Any:
        return await lab.media.GetDownload(
            mediapb.GetDownloadRequest(media_id="not-a-media-id"), metadata=own(uploader, md)
        )

    return Probe(uploader, call, elsewhere, invalid)


async def restore_media(lab: Lab) -> Probe:
    uploader = await lab.account()
    blob = Blob.random(64)
    created = await lab.media.CreateUpload(blob.request(), metadata=uploader.md)
    assert (await send(created.upload.put, blob.data)).status_code == 200
    await lab.media.CompleteUpload(
        mediapb.CompleteUploadRequest(upload_id=created.upload.upload_id), metadata=uploader.md
    )

    async def call(md: Metadata | None) -> Any:
        # Not archived (no local store archives): answered NOT_ARCHIVED, limit taken.
        return await lab.media.RestoreMedia(
            mediapb.RestoreMediaRequest(media_id=blob.media_id), metadata=own(uploader, md)
        )

    async def elsewhere(md: Metadata | None) -> Any:
        # Media the caller may not read: denied before the limit.
        return await lab.media.RestoreMedia(
            mediapb.RestoreMediaRequest(media_id=Blob.random(8).media_id),
            metadata=own(uploader, md),
        )

    async def invalid(md: Metadata | None) -> Any:
        return await lab.media.RestoreMedia(
            mediapb.RestoreMediaRequest(media_id=blob.media_id, days=31),
            metadata=own(uploader, md),
        )

    return Probe(uploader, call, elsewhere, invalid)


CASES: dict[tuple[str, str], Case] = {
    ("signup_per_address", "SignUp"): signup_per_address,
    ("refresh_per_address", "RefreshToken"): refresh_per_address,
    ("refresh_per_device", "RefreshToken"): refresh_per_device,
    ("device_register_per_account", "RegisterDevice"): register_device,
    ("key_upload_per_device", "PublishKeys"): publish_keys,
    ("key_upload_per_device", "UploadPreKeys"): upload_pre_keys,
    ("sender_keys_per_device", "SendSenderKeys"): send_sender_keys,
    ("bundle_fetch_per_target", "GetPreKeyBundles"): bundles_per_target,
    ("bundle_fetch_per_requester", "GetPreKeyBundles"): bundles_per_requester,
    ("send_per_device", "SendMessage"): send_per_device,
    ("send_per_account", "SendMessage"): send_per_account,
    ("send_per_conversation", "SendMessage"): send_per_conversation,
    ("edit_per_account", "EditMessage"): edit_message,
    ("delete_per_account", "DeleteMessage"): delete_message,
    ("react_per_account", "ReactToMessage"): react_to_message,
    ("direct_create_per_account", "CreateDirectConversation"): create_direct,
    ("group_create_per_account", "CreateGroup"): create_group,
    ("group_create_per_account", "CreateChannel"): create_channel,
    ("add_members_per_account", "AddMembers"): add_members,
    ("group_admin_per_account", "UpdateConversationInfo"): update_info,
    ("group_admin_per_account", "RemoveMember"): remove_member,
    ("group_admin_per_account", "SetMemberRole"): set_member_role,
    ("channel_subscribe_per_account", "SubscribeChannel"): subscribe_channel,
    ("push_token_per_device", "RegisterPushToken"): register_push_token,
    ("push_token_per_device", "RemovePushToken"): remove_push_token,
    ("contact_add_per_account", "AddContacts"): add_contacts,
    ("presence_subscribe_per_account", "SubscribePresence"): subscribe_presence,
    ("media_upload_per_account", "CreateUpload"): create_upload,
    ("media_download_per_account", "GetDownload"): get_download,
    ("media_restore_per_account", "RestoreMedia"): restore_media,
    # signup_overall: the last test of this module (it ends every sign-up here).
}
