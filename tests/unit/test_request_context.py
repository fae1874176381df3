"""One request context per RPC (parley_core.rpc.request): the caller from the
verified token, one ``now``, the normalised request id, the bearer token."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from parley_core.auth.caller import Caller, set_caller
from parley_core.errors import Unauthenticated
from parley_core.rpc.request import request_context

CALLER = Caller(account_id="a1", device_id="d1", token_id="t1", expires_at=2_000_000_000.0)


class Context:
    def __init__(self, metadata: tuple[tuple[str, Any], ...]) -> None:
        self._metadata = metadata

    def invocation_metadata(self) -> tuple[tuple[str, Any], ...]:
        return self._metadata


@pytest.fixture
def signed_in() -> Iterator[None]:
    set_caller(CALLER)
    yield
    set_caller(None)


def test_the_context_holds_the_verified_caller_one_now_and_the_request_id(signed_in: None) -> None:
    ticks = iter([100.0, 200.0])
    rpc = request_context(
        Context((("authorization", "Bearer abc"),)),
        clock=lambda: next(ticks),
        request_id="0190D3A4-6F1E-7C2A-9B1E-2F6A8C1D4E5F",
    )
    assert rpc.caller == CALLER
    assert (rpc.account_id, rpc.device_id) == ("a1", "d1")
    assert rpc.request_id == "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e5f"
    assert rpc.now == 100.0 and rpc.now == 100.0  # read once
    assert rpc.bearer_token == "abc"


def test_without_a_verified_caller_there_is_no_context() -> None:
    set_caller(None)
    with pytest.raises(Unauthenticated):
        request_context(Context(()), clock=lambda: 1.0)


def test_the_bearer_token_is_read_only_when_forwarded(signed_in: None) -> None:
    rpc = request_context(Context((("authorization", "Basic nope"),)), clock=lambda: 1.0)
    assert rpc.request_id == ""
    with pytest.raises(Unauthenticated):
        _ = rpc.bearer_token
