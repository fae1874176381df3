"""Pure logic of the shared core: errors, validation, page tokens, ids, tokens."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from parley_core.auth.revocations import Revocation, RevocationList
from parley_core.auth.tokens import (
    TokenIssuer,
    TokenVerifier,
    load_private_key,
    load_public_keys,
    write_key_pair,
)
from parley_core.errors import (
    InvalidArgument,
    NotFound,
    Reason,
    ResourceExhausted,
    Unauthenticated,
)
from parley_core.ids import is_valid_id, new_id
from parley_core.pagination import decode_page_token, encode_page_token
from parley_core.rpc.status import internal_status, to_grpc_status
from parley_core.validation import Check


def unpack(status: grpc.Status) -> dict[str, object]:
    """The google.rpc details a client would decode from the trailers."""
    decoded: dict[str, object] = {}
    for key, value in status.trailing_metadata:
        if key == "grpc-status-details-bin":
            parsed = status_pb2.Status.FromString(value)
            for detail in parsed.details:
                for kind in (
                    error_details_pb2.ErrorInfo,
                    error_details_pb2.BadRequest,
                    error_details_pb2.RetryInfo,
                ):
                    if detail.Is(kind.DESCRIPTOR):
                        message = kind()
                        detail.Unpack(message)
                        decoded[kind.__name__] = message
    return decoded


def test_invalid_argument_maps_with_field_violations() -> None:
    status = to_grpc_status(InvalidArgument.field("body", "too big", reason=Reason.BODY_TOO_LARGE))
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    details = unpack(status)
    assert details["ErrorInfo"].reason == "ERROR_REASON_BODY_TOO_LARGE"
    assert [v.field for v in details["BadRequest"].field_violations] == ["body"]


def test_resource_exhausted_carries_retry_info() -> None:
    status = to_grpc_status(ResourceExhausted("slow down", retry_after_seconds=1.5))
    assert status.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert unpack(status)["RetryInfo"].retry_delay.ToMilliseconds() == 1500


def test_internal_status_says_nothing_of_the_cause() -> None:
    status = internal_status()
    assert status.code == grpc.StatusCode.INTERNAL
    assert status.details == "internal error"
    assert to_grpc_status(NotFound("x")).code == grpc.StatusCode.NOT_FOUND


def test_check_collects_every_violation() -> None:
    check = Check().request_id("nope").id("conversation_id", "").text("name", "x" * 70, max_len=64)
    check.payload("body", b"", max_bytes=10).enum("type", 0, {1, 2})
    with pytest.raises(InvalidArgument) as caught:
        check.done()
    assert [v.field for v in caught.value.violations] == [
        "request_id",
        "conversation_id",
        "name",
        "body",
        "type",
    ]


def test_check_accepts_good_values_and_clamps_page_size() -> None:
    check = Check().request_id(new_id()).id("x", new_id()).text("name", "ok", min_len=1, max_len=4)
    assert check.page_size(0, default=20, maximum=100) == 20
    assert check.page_size(500, default=20, maximum=100) == 100
    check.done()
    with pytest.raises(InvalidArgument):
        Check().text("name", "tab\there", max_len=20).done()


def test_page_tokens_round_trip_and_are_bound_to_their_request() -> None:
    token = encode_page_token({"seq": 41}, scope={"conversation": "a"})
    assert decode_page_token(token, scope={"conversation": "a"}) == {"seq": 41}
    for bad_scope, bad_token in (({"conversation": "b"}, token), ({"conversation": "a"}, "%%%")):
        with pytest.raises(InvalidArgument) as caught:
            decode_page_token(bad_token, scope=bad_scope)
        assert caught.value.reason == Reason.PAGE_TOKEN_INVALID


def test_ids_are_uuid7_and_sort_by_time() -> None:
    first, second = new_id(1_000), new_id(2_000)
    assert is_valid_id(first) and first[14] == "7"
    assert first < second
    assert not is_valid_id(first.upper())


@pytest.fixture
def key_pair(tmp_path: Path) -> tuple[TokenIssuer, TokenVerifier, RevocationList]:
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    revocations = RevocationList()
    issuer = TokenIssuer(load_private_key(tmp_path / "k.pem"), ttl_seconds=60)
    verifier = TokenVerifier(load_public_keys([tmp_path / "k.pub.pem"]), revocations)
    return issuer, verifier, revocations


def test_tokens_verify_until_they_expire(key_pair) -> None:
    issuer, verifier, _ = key_pair
    now = time.time()
    token = issuer.issue(account_id="a", device_id="d", now=now)
    caller = verifier.verify(token.token, now=now + 1)
    assert (caller.account_id, caller.device_id) == ("a", "d")
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(token.token, now=now + 61)
    assert caught.value.reason == Reason.TOKEN_EXPIRED


def test_revoked_devices_are_refused_but_later_tokens_are_not_affected(key_pair) -> None:
    issuer, verifier, revocations = key_pair
    now = time.time()
    old = issuer.issue(account_id="a", device_id="d", now=now - 10)
    other_device = issuer.issue(account_id="a", device_id="e", now=now - 10)
    revocations.add(Revocation(device_id="d", revoked_at=now - 5))
    with pytest.raises(Unauthenticated) as caught:
        verifier.verify(old.token, now=now)
    assert caught.value.reason == Reason.TOKEN_REVOKED
    assert verifier.verify(other_device.token, now=now).device_id == "e"
    revocations.forget_before(now)
    assert len(revocations) == 0


def test_tokens_from_another_key_are_refused(key_pair, tmp_path: Path) -> None:
    _, verifier, _ = key_pair
    write_key_pair(tmp_path / "evil.pem", tmp_path / "evil.pub.pem")
    evil = TokenIssuer(load_private_key(tmp_path / "evil.pem"), ttl_seconds=60)
    with pytest.raises(Unauthenticated):
        verifier.verify(
            evil.issue(account_id="a", device_id="d", now=time.time()).token, now=time.time()
        )
