"""Every limited RPC, called until its limit refuses it, on a stack whose
limits are tiny (issue 15, part 3: the limits join the auth matrix).

The shared chaos stack runs with limits nothing reaches, so the auth matrix
and the fuzz tests there never see a refusal. Here every limit has a burst of
one or two and refills once a minute; one case per (limit, RPC) pair of the
table in docs/ARCHITECTURE.md (tests/limited_rpcs.py, checked against it and
against LimitName) calls the RPC with valid requests until it is refused and
checks the refusal: RESOURCE_EXHAUSTED, reason RATE_LIMITED in the parley.dev
domain, the expected limit's name in the ErrorInfo metadata, a RetryInfo
within the bucket's refill time, and the refusal counted in
parley_rate_limited_total. Then, with the caller's budget spent, the matrix's
other answers still come first: bad credentials are UNAUTHENTICATED, a call
aimed at a conversation the caller is not in is PERMISSION_DENIED, and bad
input is INVALID_ARGUMENT, never RATE_LIMITED.

The stack trusts 127.0.0.1 as its load balancer and every account signs up
from an address of its own (x-forwarded-for), so one address's sign-up budget
does not stop the set-up; signup_overall is exhausted last.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import keys_pb2 as keypb
from parley.media.v1 import media_pb2 as mediapb
from parley.presence.v1 import presence_pb2 as ppb
from parley.search.v1 import search_pb2 as spb
from parley_core.limits import LimitName
from parley_dev.stack import LocalStack
from tests.chaos.clients import metric
from tests.chaos.limit_cases import CASES as OTHER_CASES
from tests.chaos.limit_cases_search import SEARCH_CASES
from tests.chaos.limit_lab import (
    BAD_TOKEN,
    CALL_TIMEOUT,
    MAX_ATTEMPTS,
    PER_MINUTE,
    SIGNUPS,
    TINY_LIMITS,
    Lab,
)
from tests.limited_rpcs import LIMITS_BY_RPC, documented_limits, limits_to_rpcs
from tests.refusals import assert_rate_limited, refused

pytestmark = pytest.mark.chaos

CASES = {**OTHER_CASES, **SEARCH_CASES}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def tiny(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("tiny_limits")),
        shutdown_grace_seconds=2.0,
        extra_config={"limits": TINY_LIMITS},
    ) as local:
        yield local


KEYS_RPCS = {
    m.name
    for service in (
        kpb.DESCRIPTOR.services_by_name["AccountService"],
        keypb.DESCRIPTOR.services_by_name["KeyService"],
    )
    for m in service.methods
}
PRESENCE_RPCS = {m.name for m in ppb.DESCRIPTOR.services_by_name["PresenceService"].methods}
MEDIA_RPCS = {m.name for m in mediapb.DESCRIPTOR.services_by_name["MediaService"].methods}
SEARCH_RPCS = {m.name for m in spb.DESCRIPTOR.services_by_name["SearchService"].methods}


def metrics_url(stack: LocalStack, rpc: str) -> str:
    if rpc in KEYS_RPCS:
        return stack.keys_metrics_url
    if rpc in MEDIA_RPCS:
        return stack.media_metrics_url
    if rpc in SEARCH_RPCS:
        return stack.search_metrics_url
    return stack.presence_metrics_url if rpc in PRESENCE_RPCS else stack.message_metrics_urls[0]


async def refused_count(stack: LocalStack, rpc: str, limit: str) -> float:
    return await metric(metrics_url(stack, rpc), "parley_rate_limited_total", limit=limit)


async def failure(call: Awaitable[Any]) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {reply!r:.200}")


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def lab(tiny: LocalStack) -> AsyncIterator[Lab]:
    opened = Lab(tiny)
    yield opened
    await opened.close()


def test_the_matrix_has_every_limit_of_every_rpc() -> None:
    documented = documented_limits()
    assert set(documented) == {name.value for name in LimitName}, "the docs' table vs LimitName"
    assert documented == limits_to_rpcs(), "tests/limited_rpcs.py vs docs/ARCHITECTURE.md"
    pairs = {(limit, rpc) for rpc, limits in LIMITS_BY_RPC.items() for limit in limits}
    assert set(CASES) | {("signup_overall", "SignUp")} == pairs


@pytest.mark.parametrize(("limit", "rpc"), list(CASES), ids=[f"{rpc}-{lim}" for lim, rpc in CASES])
async def test_a_limited_rpc_is_refused_by_its_limit_after_the_other_checks(
    tiny: LocalStack, lab: Lab, limit: str, rpc: str
) -> None:
    probe = await CASES[(limit, rpc)](lab)
    before = await refused_count(tiny, rpc, limit)
    for attempt in range(MAX_ATTEMPTS):
        try:
            await asyncio.wait_for(probe.call(None), timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as error:
            shape = assert_rate_limited(error, {limit}, f"{rpc} call {attempt + 1}")
            break
    else:
        raise AssertionError(f"{rpc} was not refused by {limit} in {MAX_ATTEMPTS} calls")
    assert shape.retry_delay is not None and shape.retry_delay <= 60 / PER_MINUTE + 0.01, shape
    assert await refused_count(tiny, rpc, limit) == before + 1, "the refusal was not counted"

    # With the budget spent, the checks before the limit still answer first.
    if probe.caller is not None:
        answer = await failure(probe.call(BAD_TOKEN))
        assert answer.code() == grpc.StatusCode.UNAUTHENTICATED, refused(answer).describe()
    if probe.foreign is not None:
        answer = await failure(probe.foreign(None))
        assert answer.code() == grpc.StatusCode.PERMISSION_DENIED, refused(answer).describe()
    if probe.invalid is not None:
        answer = await failure(probe.invalid(None))
        assert answer.code() == grpc.StatusCode.INVALID_ARGUMENT, refused(answer).describe()


async def test_sign_ups_from_everywhere_are_held_by_the_overall_limit(
    tiny: LocalStack, lab: Lab
) -> None:
    """Last: it spends the region's sign-up budget."""
    before = await refused_count(tiny, "SignUp", "signup_overall")
    for attempt in range(SIGNUPS + 1):
        try:
            await lab.account()
        except grpc.aio.AioRpcError as error:
            assert_rate_limited(error, {"signup_overall"}, f"sign-up {attempt + 1}")
            break
    else:
        raise AssertionError(f"{SIGNUPS + 1} sign-ups from as many addresses all passed")
    assert await refused_count(tiny, "SignUp", "signup_overall") == before + 1
