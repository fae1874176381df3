"""parley_sdk without servers: error mapping, retry policy, token refresh, credentials."""

from __future__ import annotations

import asyncio
import re
import stat
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc import aio

import parley_sdk
from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2
from parley_cli.profiles import Profile, ProfileError, ProfileStore
from parley_sdk import (
    AlreadyExistsError,
    Credentials,
    HandleTakenError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ParleyError,
    PermissionDeniedError,
    RateLimitedError,
    ResourceExhaustedError,
    RetryPolicy,
    TokenExpiredError,
    TokenRevokedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from parley_sdk._session import Session
from parley_sdk.retry import call_with_retry, new_request_id
from parley_sdk.stream import reconnectable

DETAILS_KEY = "grpc-status-details-bin"


def _pack(message: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def rpc_error(
    code: grpc.StatusCode,
    message: str = "boom",
    *,
    reason: str | None = None,
    domain: str = "parley.dev",
    violations: list[tuple[str, str]] = (),  # type: ignore[assignment]
    retry_after: float | None = None,
    raw_details: bytes | None = None,
    metadata: dict[str, str] | None = None,
) -> aio.AioRpcError:
    """What grpc.aio raises for a failed call whose server attached google.rpc details."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason is not None:
        info = error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {})
        status.details.append(_pack(info))
    if violations:
        bad = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                for f, d in violations
            ]
        )
        status.details.append(_pack(bad))
    if retry_after is not None:
        delay = duration_pb2.Duration()
        delay.FromNanoseconds(int(retry_after * 1e9))
        status.details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
    details = raw_details if raw_details is not None else status.SerializeToString()
    trailing = aio.Metadata(("other", "x"), (DETAILS_KEY, details))
    return aio.AioRpcError(code, aio.Metadata(), trailing, message, None)


# -- error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "reason", "expected"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, "ERROR_REASON_INVALID_FIELD", InvalidArgumentError),
        (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_TOKEN_INVALID", UnauthenticatedError),
        (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_TOKEN_EXPIRED", TokenExpiredError),
        (grpc.StatusCode.UNAUTHENTICATED, "ERROR_REASON_TOKEN_REVOKED", TokenRevokedError),
        (grpc.StatusCode.PERMISSION_DENIED, "ERROR_REASON_NOT_A_MEMBER", PermissionDeniedError),
        (grpc.StatusCode.NOT_FOUND, "ERROR_REASON_ACCOUNT_NOT_FOUND", NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, "ERROR_REASON_HANDLE_TAKEN", HandleTakenError),
        (grpc.StatusCode.FAILED_PRECONDITION, "", parley_sdk.FailedPreconditionError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_RATE_LIMITED", RateLimitedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, "ERROR_REASON_GROUP_FULL", parley_sdk.GroupFullError),
        (grpc.StatusCode.UNAVAILABLE, "ERROR_REASON_SHUTTING_DOWN", UnavailableError),
        (grpc.StatusCode.INTERNAL, "ERROR_REASON_INTERNAL", InternalError),
        (grpc.StatusCode.ABORTED, "", parley_sdk.AbortedError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, "", parley_sdk.DeadlineExceededError),
    ],
)
def test_code_and_reason_pick_the_class(
    code: grpc.StatusCode, reason: str, expected: type[ParleyError]
) -> None:
    error = from_rpc_error(rpc_error(code, "nope", reason=reason))
    assert type(error) is expected
    assert error.code is code
    assert error.reason == reason
    assert error.message == "nope"
    assert isinstance(error, ParleyError)


def test_every_server_reason_is_a_known_enum_name() -> None:
    # Reasons the SDK refines on must exist in the proto, or they never match.
    names = set(common_pb2.ErrorReason.keys())
    assert {"ERROR_REASON_TOKEN_EXPIRED", "ERROR_REASON_TOKEN_REVOKED"} <= names
    assert "ERROR_REASON_HANDLE_TAKEN" in names


def test_subclass_hierarchy_lets_callers_catch_broadly() -> None:
    assert issubclass(TokenExpiredError, UnauthenticatedError)
    assert issubclass(TokenRevokedError, UnauthenticatedError)
    assert issubclass(HandleTakenError, AlreadyExistsError)


def test_reason_refines_only_under_its_own_code() -> None:
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.PERMISSION_DENIED, reason="ERROR_REASON_TOKEN_EXPIRED")
    )
    assert type(error) is PermissionDeniedError


def test_bad_request_violations_are_exposed() -> None:
    error = from_rpc_error(
        rpc_error(
            grpc.StatusCode.INVALID_ARGUMENT,
            "invalid request",
            reason="ERROR_REASON_INVALID_FIELD",
            violations=[("handle", "too short"), ("device.name", "empty")],
        )
    )
    assert isinstance(error, InvalidArgumentError)
    assert error.field_violations == [("handle", "too short"), ("device.name", "empty")]


def test_retry_info_becomes_retry_after_seconds() -> None:
    error = from_rpc_error(
        rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED, reason="ERROR_REASON_RATE_LIMITED", retry_after=1.5
        )
    )
    assert error.retry_after == pytest.approx(1.5)
    plain = from_rpc_error(rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED))
    assert plain.retry_after is None


def test_no_details_falls_back_to_the_code() -> None:
    # What grpc itself produces for e.g. a refused connection.
    bare = aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE, aio.Metadata(), aio.Metadata(), "connection refused", None
    )
    error = from_rpc_error(bare)
    assert type(error) is UnavailableError
    assert error.reason == ""
    assert error.message == "connection refused"
    assert error.field_violations == []


def test_garbage_details_do_not_raise() -> None:
    error = from_rpc_error(rpc_error(grpc.StatusCode.NOT_FOUND, raw_details=b"\xff\x00garbage"))
    assert type(error) is NotFoundError
    assert error.reason == ""


def test_foreign_domain_reason_is_ignored() -> None:
    error = from_rpc_error(
        rpc_error(
            grpc.StatusCode.UNAUTHENTICATED,
            reason="ERROR_REASON_TOKEN_EXPIRED",
            domain="proxy.example.com",
        )
    )
    assert type(error) is UnauthenticatedError
    assert error.reason == ""


def test_transport_code_wins_over_the_trailer() -> None:
    status = status_pb2.Status(code=code_pb2.NOT_FOUND, message="x")
    trailing = aio.Metadata((DETAILS_KEY, status.SerializeToString()))
    error = from_rpc_error(
        aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, aio.Metadata(), trailing, "x", None)
    )
    assert type(error) is UnavailableError


def test_str_names_code_and_short_reason() -> None:
    error = from_rpc_error(
        rpc_error(grpc.StatusCode.ALREADY_EXISTS, "taken", reason="ERROR_REASON_HANDLE_TAKEN")
    )
    assert str(error) == "ALREADY_EXISTS/HANDLE_TAKEN: taken"


# -- retry policy ---------------------------------------------------------------------


def test_backoff_grows_exponentially_and_caps() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=1.0, multiplier=2.0, jitter=0.0)
    delays = [policy.backoff(attempt) for attempt in range(1, 7)]
    assert delays == pytest.approx([0.1, 0.2, 0.4, 0.8, 1.0, 1.0])


@pytest.mark.parametrize("rand", [0.0, 0.5, 0.999999])
def test_jitter_stays_within_bounds(rand: float) -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.2)
    delay = policy.backoff(1, rand=lambda: rand)
    assert 0.8 <= delay <= 1.2


def test_jitter_spreads_delays() -> None:
    policy = RetryPolicy(initial_backoff=1.0, max_backoff=10.0, jitter=0.5)
    assert policy.backoff(1, rand=lambda: 0.0) < policy.backoff(1, rand=lambda: 1.0)


def test_server_hint_is_a_floor_but_bounded() -> None:
    policy = RetryPolicy(initial_backoff=0.1, max_backoff=2.0, jitter=0.0)
    assert policy.backoff(1, retry_after=1.5) == pytest.approx(1.5)
    assert policy.backoff(1, retry_after=0.01) == pytest.approx(0.1)
    assert policy.backoff(1, retry_after=3600) == pytest.approx(8.0)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 0},
        {"initial_backoff": -1},
        {"initial_backoff": 2, "max_backoff": 1},
        {"multiplier": 0.5},
        {"jitter": 1.5},
    ],
)
def test_policy_rejects_nonsense(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        RetryPolicy(**kwargs)


def test_only_unavailable_and_aborted_are_retried() -> None:
    policy = RetryPolicy(max_attempts=3)
    for retryable in (
        UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE),
        parley_sdk.AbortedError("contention", code=grpc.StatusCode.ABORTED),
    ):
        assert policy.should_retry(retryable, attempt=1)
        assert policy.should_retry(retryable, attempt=2)
        assert not policy.should_retry(retryable, attempt=3)
    for other in (
        InternalError("x", code=grpc.StatusCode.INTERNAL),
        ResourceExhaustedError("x", code=grpc.StatusCode.RESOURCE_EXHAUSTED),
        parley_sdk.DeadlineExceededError("x", code=grpc.StatusCode.DEADLINE_EXCEEDED),
        TokenExpiredError("x", code=grpc.StatusCode.UNAUTHENTICATED),
    ):
        assert not policy.should_retry(other, attempt=1)


def test_request_ids_are_lower_case_canonical_uuids() -> None:
    ids = {new_request_id() for _ in range(100)}
    assert len(ids) == 100
    pattern = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
    assert all(pattern.match(request_id) for request_id in ids)


class FakeSleep:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def failing(
    errors: list[ParleyError], result: str = "ok"
) -> tuple[Callable[[], Awaitable[str]], list[int]]:
    calls: list[int] = []

    async def attempt() -> str:
        calls.append(1)
        if errors:
            raise errors.pop(0)
        return result

    return attempt, calls


def unavailable() -> UnavailableError:
    return UnavailableError("down", code=grpc.StatusCode.UNAVAILABLE)


async def test_call_with_retry_recovers_from_unavailable() -> None:
    sleep = FakeSleep()
    attempt, calls = failing([unavailable(), unavailable()])
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, jitter=0.0)
    assert await call_with_retry(attempt, policy=policy, sleep=sleep) == "ok"
    assert len(calls) == 3
    assert sleep.delays == pytest.approx([0.1, 0.2])


async def test_call_with_retry_recovers_from_aborted_after_the_servers_hint() -> None:
    sleep = FakeSleep()
    aborted = from_rpc_error(rpc_error(grpc.StatusCode.ABORTED, retry_after=0.7))
    assert isinstance(aborted, parley_sdk.AbortedError)
    attempt, calls = failing([aborted, unavailable()])
    policy = RetryPolicy(max_attempts=5, initial_backoff=0.1, jitter=0.0)
    assert await call_with_retry(attempt, policy=policy, sleep=sleep) == "ok"
    assert len(calls) == 3
    # RetryInfo is a floor for the first wait; the second follows the backoff.
    assert sleep.delays == pytest.approx([0.7, 0.2])


async def test_call_with_retry_gives_up_after_max_attempts() -> None:
    sleep = FakeSleep()
    attempt, calls = failing([unavailable() for _ in range(10)])
    with pytest.raises(UnavailableError):
        await call_with_retry(attempt, policy=RetryPolicy(max_attempts=3), sleep=sleep)
    assert len(calls) == 3
    assert len(sleep.delays) == 2


async def test_call_with_retry_never_retries_other_errors() -> None:
    sleep = FakeSleep()
    attempt, calls = failing([InternalError("bug", code=grpc.StatusCode.INTERNAL)])
    with pytest.raises(InternalError):
        await call_with_retry(attempt, policy=RetryPolicy(), sleep=sleep)
    assert len(calls) == 1
    assert sleep.delays == []


def rate_limited(retry_after: float | None, limit: str = "send_per_device") -> ParleyError:
    return from_rpc_error(
        rpc_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            reason="ERROR_REASON_RATE_LIMITED",
            retry_after=retry_after,
            metadata={"limit": limit},
        )
    )


def test_a_rate_limit_refusal_names_its_limit_and_when_to_retry() -> None:
    error = rate_limited(1.5)
    assert isinstance(error, RateLimitedError) and isinstance(error, ResourceExhaustedError)
    assert error.limit == "send_per_device"
    assert error.retry_after == 1.5
    assert RateLimitedError("x").limit == ""


def test_rate_limits_are_waited_out_within_the_bound_and_the_attempts() -> None:
    policy = RetryPolicy(max_attempts=4, jitter=0.0, rate_limit_max_wait=2.0)
    assert policy.rate_limit_delay(rate_limited(0.5), attempt=1) == 0.5
    # The waits of one call add up to the bound, not beyond it.
    assert policy.rate_limit_delay(rate_limited(0.5), attempt=2, waited=1.5) == 0.5
    assert policy.rate_limit_delay(rate_limited(0.6), attempt=2, waited=1.5) is None
    assert policy.rate_limit_delay(rate_limited(2.5), attempt=1) is None
    assert policy.rate_limit_delay(rate_limited(0.1), attempt=4) is None
    # Without RetryInfo there is nothing to wait for; other errors are not rate limits.
    assert policy.rate_limit_delay(rate_limited(None), attempt=1) is None
    assert policy.rate_limit_delay(unavailable(), attempt=1) is None
    assert RetryPolicy(rate_limit_max_wait=0).rate_limit_delay(rate_limited(0.1), attempt=1) is None
    # Jitter only ever lengthens the wait: a retry before the token is there fails again.
    jittered = RetryPolicy(jitter=0.2).rate_limit_delay(
        rate_limited(1.0), attempt=1, rand=lambda: 1
    )
    assert jittered is not None and 1.0 < jittered <= 1.05
    assert not policy.should_retry(rate_limited(0.5), attempt=1)


async def test_call_with_retry_waits_out_a_rate_limit_then_raises_past_the_bound() -> None:
    sleep = FakeSleep()
    attempt, calls = failing([rate_limited(0.4), rate_limited(0.7)])
    policy = RetryPolicy(jitter=0.0, rate_limit_max_wait=2.0)
    assert await call_with_retry(attempt, policy=policy, sleep=sleep) == "ok"
    assert len(calls) == 3
    assert sleep.delays == pytest.approx([0.4, 0.7])
    # A refusal asking for longer than the bound is the caller's at once.
    sleep = FakeSleep()
    attempt, calls = failing([rate_limited(0.4), rate_limited(1.7)])
    with pytest.raises(RateLimitedError) as refused:
        await call_with_retry(attempt, policy=policy, sleep=sleep)
    assert refused.value.retry_after == 1.7 and refused.value.limit == "send_per_device"
    assert len(calls) == 2 and sleep.delays == pytest.approx([0.4])


# -- the unary call path: same request_id on retries, refresh once ----------------------


def credentials(*, expires_in: float = 3600, token: str = "at-1") -> Credentials:
    now = datetime.now(UTC)
    return Credentials(
        access_token=token,
        access_token_expire_time=now + timedelta(seconds=expires_in),
        refresh_token=f"rt-for-{token}",
        refresh_token_expire_time=now + timedelta(days=30),
        account_id="acc-1",
        device_id="dev-1",
    )


class FakeMethod:
    """A unary multi-callable that fails with the queued errors, then echoes."""

    def __init__(self, errors: list[aio.AioRpcError]) -> None:
        self.errors = errors
        self.calls: list[tuple[Any, dict[str, str]]] = []

    def __call__(self, request: Any, *, metadata: Any, timeout: float | None) -> Any:
        self.calls.append((request, dict(metadata)))

        async def respond() -> Any:
            await asyncio.sleep(0)
            if self.errors:
                raise self.errors.pop(0)
            return request

        return respond()


class FakeAccounts:
    def __init__(self) -> None:
        self.refreshes: list[accounts_pb2.RefreshTokenRequest] = []

    def RefreshToken(
        self, request: accounts_pb2.RefreshTokenRequest, *, metadata: Any, timeout: float | None
    ) -> Any:
        self.refreshes.append(request)

        async def respond() -> accounts_pb2.RefreshTokenResponse:
            await asyncio.sleep(0.01)
            response = accounts_pb2.RefreshTokenResponse()
            response.credentials.access_token = f"at-{len(self.refreshes) + 1}"
            response.credentials.refresh_token = f"rt-{len(self.refreshes) + 1}"
            response.credentials.access_token_expire_time.FromDatetime(
                datetime.now(UTC) + timedelta(hours=1)
            )
            response.credentials.refresh_token_expire_time.FromDatetime(
                datetime.now(UTC) + timedelta(days=30)
            )
            return response

        return respond()


async def make_session(creds: Credentials | None, seen: list[Credentials]) -> Session:
    # Channels are never used: the fakes stand in for the stubs.
    session = Session(
        keys_channel=aio.insecure_channel("127.0.0.1:9"),
        message_channel=aio.insecure_channel("127.0.0.1:9"),
        credentials=creds,
        retry_policy=RetryPolicy(max_attempts=4, initial_backoff=0.001, max_backoff=0.01),
        stream_retry_policy=RetryPolicy(max_attempts=2, initial_backoff=0.001, max_backoff=0.01),
        timeout=1.0,
        refresh_margin=timedelta(seconds=60),
        on_credentials_changed=seen.append,
    )
    session.accounts = FakeAccounts()  # type: ignore[assignment]
    return session


async def test_retries_resend_the_same_request_id() -> None:
    seen: list[Credentials] = []
    session = await make_session(credentials(), seen)
    method = FakeMethod([rpc_error(grpc.StatusCode.UNAVAILABLE) for _ in range(2)])
    request = accounts_pb2.RegisterDeviceRequest(request_id=new_request_id())
    try:
        await session.unary(method, request)  # type: ignore[arg-type]
    finally:
        await session.close()
    assert len(method.calls) == 3
    assert {sent.request_id for sent, _ in method.calls} == {request.request_id}
    assert all(md["authorization"] == "Bearer at-1" for _, md in method.calls)


async def test_aborted_is_retried_with_the_same_request_id() -> None:
    seen: list[Credentials] = []
    session = await make_session(credentials(), seen)
    method = FakeMethod(
        [rpc_error(grpc.StatusCode.ABORTED), rpc_error(grpc.StatusCode.UNAVAILABLE)]
    )
    request = accounts_pb2.RegisterDeviceRequest(request_id=new_request_id())
    try:
        await session.unary(method, request)  # type: ignore[arg-type]
    finally:
        await session.close()
    assert len(method.calls) == 3
    assert {sent.request_id for sent, _ in method.calls} == {request.request_id}


async def test_a_rate_limited_call_is_repeated_with_the_same_request_id() -> None:
    seen: list[Credentials] = []
    session = await make_session(credentials(), seen)
    refusal = rpc_error(
        grpc.StatusCode.RESOURCE_EXHAUSTED, reason="ERROR_REASON_RATE_LIMITED", retry_after=0.01
    )
    method = FakeMethod([refusal])
    request = accounts_pb2.RegisterDeviceRequest(request_id=new_request_id())
    try:
        await session.unary(method, request)  # type: ignore[arg-type]
    finally:
        await session.close()
    assert len(method.calls) == 2
    assert {sent.request_id for sent, _ in method.calls} == {request.request_id}


async def test_token_expired_refreshes_once_and_retries() -> None:
    seen: list[Credentials] = []
    session = await make_session(credentials(), seen)
    expired = rpc_error(grpc.StatusCode.UNAUTHENTICATED, reason="ERROR_REASON_TOKEN_EXPIRED")
    method = FakeMethod([expired])
    try:
        await session.unary(method, accounts_pb2.GetAccountRequest())  # type: ignore[arg-type]
    finally:
        await session.close()
    assert [md["authorization"] for _, md in method.calls] == ["Bearer at-1", "Bearer at-2"]
    assert [c.access_token for c in seen] == ["at-2"]
    assert seen[0].account_id == "acc-1"  # identity survives rotation


async def test_token_expired_twice_is_raised() -> None:
    session = await make_session(credentials(), [])
    expired = [
        rpc_error(grpc.StatusCode.UNAUTHENTICATED, reason="ERROR_REASON_TOKEN_EXPIRED")
        for _ in range(3)
    ]
    method = FakeMethod(expired)
    try:
        with pytest.raises(TokenExpiredError):
            await session.unary(method, accounts_pb2.GetAccountRequest())  # type: ignore[arg-type]
    finally:
        await session.close()
    assert len(method.calls) == 2


async def test_near_expiry_refreshes_first_and_only_once_for_concurrent_calls() -> None:
    seen: list[Credentials] = []
    session = await make_session(credentials(expires_in=30), seen)
    method = FakeMethod([])
    try:
        await asyncio.gather(
            *(session.unary(method, accounts_pb2.GetAccountRequest()) for _ in range(5))  # type: ignore[arg-type]
        )
    finally:
        await session.close()
    fake_accounts = session.accounts
    assert isinstance(fake_accounts, FakeAccounts)
    assert len(fake_accounts.refreshes) == 1  # refresh tokens are single use
    assert {md["authorization"] for _, md in method.calls} == {"Bearer at-2"}


async def test_unauthenticated_call_without_credentials_fails_fast() -> None:
    session = await make_session(None, [])
    method = FakeMethod([])
    try:
        with pytest.raises(UnauthenticatedError):
            await session.unary(method, accounts_pb2.GetAccountRequest())  # type: ignore[arg-type]
    finally:
        await session.close()
    assert method.calls == []


# -- credentials and profiles ---------------------------------------------------------


def test_credentials_json_round_trip_and_secret_repr() -> None:
    original = credentials()
    assert Credentials.from_json(original.to_json()) == original
    assert "at-1" not in repr(original)
    assert "rt-for" not in repr(original)
    with pytest.raises(ValueError, match="lack"):
        Credentials.from_json('{"access_token": "x"}')


def test_needs_refresh_respects_margin_and_lifetime() -> None:
    now = datetime.now(UTC)
    creds = credentials(expires_in=50)
    margin = timedelta(seconds=60)
    assert creds.needs_refresh(margin=margin, now=now)
    # A 50 s token received just now: the margin shrinks to 25 s.
    assert not creds.needs_refresh(margin=margin, now=now, received_at=now)
    assert not credentials(expires_in=3600).needs_refresh(margin=margin, now=now)


def test_profiles_are_private_files(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "home")
    profile = Profile(
        name="alice",
        handle="alice",
        keys_target="127.0.0.1:7101",
        message_target="127.0.0.1:7102",
        credentials=credentials(),
    )
    store.save(profile)
    path = store.path("alice")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert store.load("alice") == profile
    with pytest.raises(ProfileError):
        store.path("../escape")
    with pytest.raises(ProfileError, match="no profile"):
        store.load("bob")


def test_a_stream_reopens_after_a_rate_limit_only_when_told_when() -> None:
    assert reconnectable(rate_limited(1.0))
    assert not reconnectable(rate_limited(None))
    group_full = from_rpc_error(
        rpc_error(grpc.StatusCode.RESOURCE_EXHAUSTED, reason="ERROR_REASON_GROUP_FULL")
    )
    assert not reconnectable(group_full)
    assert reconnectable(unavailable())
