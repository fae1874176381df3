"""Bad input is answered as the protos promise: by the service, with a
BadRequest field violation naming the field, wherever the API says so."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from parley_core.config import ANSWERED_BODY_BYTES, REQUEST_HEADROOM_BYTES
from parley_dev.stack import LocalStack
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
