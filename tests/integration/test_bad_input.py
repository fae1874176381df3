"""Bad input is answered as the protos promise: by the service, with a
BadRequest field violation naming the field, wherever the API says so."""

from __future__ import annotations

import uuid
from typing import Any

import grpc
import pytest

from tests.users import error_fields, error_reason, rpc, sign_up


async def refused(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


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
