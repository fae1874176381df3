"""Bad input is answered as the protos promise: by the service, with a
BadRequest field violation naming the field, wherever the API says so."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import keys_pb2
from parley.message.v1 import messages_pb2 as mpb
from parley.presence.v1 import presence_pb2 as ppb
from parley_core.config import ANSWERED_BODY_BYTES, REQUEST_HEADROOM_BYTES
from parley_dev.stack import LocalStack
from svc_keys.servicer.accounts import DEVICES_PAGE_MAX
from svc_keys.servicer.keys import CLAIM_PAGE_MAX
from svc_message.servicer.changes import LIST_PAGE_MAX, RECEIPTS_PAGE_MAX
from svc_message.servicer.groups import MEMBERS_PAGE_MAX
from svc_message.servicer.inbox import INBOX_PAGE_MAX
from svc_message.servicer.messages import HISTORY_PAGE_MAX
from svc_presence.servicer.presence import CONTACTS_PAGE_MAX
from tests.users import direct, error_fields, error_reason, rpc, send, sign_up

MIB = 1 << 20


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


# -- message bodies ---------------------------------------------------------------


async def test_a_body_too_large_is_answered_by_the_service_up_to_the_documented_cap(
    keys, messages, stack: LocalStack
) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    limit = stack.settings.message.max_body_bytes
    for size in (limit + 1, MIB + 1, ANSWERED_BODY_BYTES):
        error = await refused(send(messages, alice, conversation, b"x" * size))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, size
        assert error_reason(error) == "ERROR_REASON_BODY_TOO_LARGE", size
        assert error_fields(error) == ["body"], size

    sent = await send(messages, alice, conversation, b"original")
    for size in (limit + 1, MIB + 1):
        error = await refused(
            rpc(
                messages,
                "EditMessage",
                alice,
                conversation_id=conversation,
                message_id=sent.message_id,
                body=b"y" * size,
            )
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, size
        assert error_reason(error) == "ERROR_REASON_BODY_TOO_LARGE", size
        assert error_fields(error) == ["body"], size


async def test_a_request_over_the_cap_is_refused_by_grpc_unread(keys, messages) -> None:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation = await direct(messages, alice, bob)
    size = ANSWERED_BODY_BYTES + REQUEST_HEADROOM_BYTES + 1
    error = await refused(send(messages, alice, conversation, b"x" * size))
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert error_reason(error) == ""
    # The server still serves.
    assert (await send(messages, alice, conversation, b"fine")).body == b"fine"


# -- group member lists -------------------------------------------------------------


def strangers(count: int) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(count)]


async def test_create_group_names_a_member_list_that_cannot_fit(keys, messages) -> None:
    owner = await sign_up(keys)
    for ids in (strangers(1024), strangers(4097)):
        error = await refused(
            rpc(messages, "CreateGroup", owner, title="crowd", member_account_ids=ids)
        )
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, len(ids)
        assert error_reason(error) == "ERROR_REASON_INVALID_FIELD"
        assert error_fields(error) == ["member_account_ids"], len(ids)


async def test_repeats_and_the_caller_do_not_count_against_the_member_list(keys, messages) -> None:
    owner = await sign_up(keys)
    ids = strangers(1023)
    error = await refused(
        rpc(
            messages,
            "CreateGroup",
            owner,
            title="crowd",
            member_account_ids=[*ids, *ids[:500], owner.account_id],
        )
    )
    # Past validation: the strangers are not accounts.
    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(error) == "ERROR_REASON_ACCOUNT_NOT_FOUND"


# -- page sizes ---------------------------------------------------------------------


async def test_every_paged_rpc_caps_page_size_and_names_a_negative_one(
    keys, key_service, messages, presence
) -> None:
    owner, member = await sign_up(keys), await sign_up(keys)
    view = await rpc(
        messages, "CreateGroup", owner, title="paged", member_account_ids=[member.account_id]
    )
    group = view.conversation.conversation_id
    sent = await send(messages, owner, group, b"hello")
    paged: list[tuple[Any, Any, dict[str, Any], int]] = [
        (keys.ListDevices, kpb.ListDevicesRequest, {}, DEVICES_PAGE_MAX),
        (key_service.ClaimSenderKeys, keys_pb2.ClaimSenderKeysRequest, {}, CLAIM_PAGE_MAX),
        (messages.ListConversations, mpb.ListConversationsRequest, {}, INBOX_PAGE_MAX),
        (
            messages.ListMembers,
            mpb.ListMembersRequest,
            {"conversation_id": group},
            MEMBERS_PAGE_MAX,
        ),
        (
            messages.ListMessages,
            mpb.ListMessagesRequest,
            {"conversation_id": group},
            HISTORY_PAGE_MAX,
        ),
        (
            messages.ListReactions,
            mpb.ListReactionsRequest,
            {"conversation_id": group, "message_id": sent.message_id},
            LIST_PAGE_MAX,
        ),
        (
            messages.ListMessageReceipts,
            mpb.ListMessageReceiptsRequest,
            {"conversation_id": group, "seq": sent.seq},
            RECEIPTS_PAGE_MAX,
        ),
        (presence.ListContacts, ppb.ListContactsRequest, {}, CONTACTS_PAGE_MAX),
    ]
    for call, request, fields, maximum in paged:
        name = request.DESCRIPTOR.name
        await call(request(page_size=maximum + 1, **fields), metadata=owner.md)
        error = await refused(call(request(page_size=-1, **fields), metadata=owner.md))
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, name
        assert error_fields(error) == ["page_size"], name
