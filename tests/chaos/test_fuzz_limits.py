"""The fuzz tests again, for every limited RPC, on a stack whose limits refuse
(issue 15, part 3).

On the shared chaos stack the limits are never reached, so a fuzzed request
is never refused for its rate. Here every limit has a burst of one and
refills once a minute (but signup_overall, which the harness's own sign-ups
spend), and the world's set-up already spent the fuzzing account's send
budget: after its first valid request, each limited RPC refuses every valid
one. Every answer must still be an expected status; each RESOURCE_EXHAUSTED
must be a well-formed rate-limit refusal naming one of the RPC's limits with a
RetryInfo (or carry a reason of its own); undecodable bytes stay
INVALID_ARGUMENT; and the services stay healthy. How many refusals each RPC
met is printed.

The stack trusts 127.0.0.1 as its load balancer: the harness's own sign-ups
name a fresh address each, while fuzzed sign-ups come from 127.0.0.1 itself
and share one address's budget.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from hypothesis import settings

from parley_core.limits import LimitName
from parley_dev.stack import LocalStack
from tests.chaos.fuzz_world import build_world
from tests.chaos.fuzzing import (
    FUZZ,
    UNARY,
    Caller,
    World,
    assert_healthy,
    fuzz_bytes,
    fuzz_fields,
)
from tests.limited_rpcs import LIMITS_BY_RPC

pytestmark = pytest.mark.chaos

FUZZ_LIMITS: dict[str, Any] = {
    "trusted_proxies": ["127.0.0.1/32"],
    **{name.value: {"burst": 1, "per_minute": 1} for name in LimitName},
    "signup_overall": {"burst": 10_000, "per_minute": 1},
}
LIMITED = [(service, method) for service, method in UNARY if method.name in LIMITS_BY_RPC]
# Fewer examples than on the shared stack: past the first valid request the
# answers of one RPC are alike, and this runs for 23 RPCs.
FIELDS = settings(FUZZ, max_examples=40)
BYTES = settings(FUZZ, max_examples=15)

_addresses = itertools.count(1)


def fresh_address() -> str:
    n = next(_addresses)
    return f"198.19.{n // 250}.{n % 250 + 1}"  # RFC 2544's benchmarking block


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def limited_stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalStack]:
    async with LocalStack.with_free_ports(
        root=Path(tmp_path_factory.mktemp("fuzz_limits")),
        shutdown_grace_seconds=2.0,
        extra_config={"limits": FUZZ_LIMITS},
    ) as local:
        yield local


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def world(limited_stack: LocalStack) -> World:
    # One send of the fuzzing account: its send budget is spent from the start.
    return await build_world(limited_stack, sends=1, address=fresh_address)


@pytest.fixture(scope="module")
def caller(world: World) -> Iterator[Caller]:
    opened = Caller(world)
    yield opened
    opened.close()


def _ids(entry: tuple[Any, Any]) -> str:
    return str(entry[1].name)


def test_every_limited_rpc_is_fuzzed() -> None:
    assert {method.name for _service, method in LIMITED} == set(LIMITS_BY_RPC)


@pytest.mark.parametrize("rpc", LIMITED, ids=_ids)
def test_fuzzed_requests_get_expected_statuses_with_limits_reached(
    rpc: tuple[Any, Any], caller: Caller
) -> None:
    fuzz_fields(caller, *rpc, FIELDS)


@pytest.mark.parametrize("rpc", LIMITED, ids=_ids)
def test_bytes_that_are_no_request_are_invalid_argument_with_limits_reached(
    rpc: tuple[Any, Any], caller: Caller
) -> None:
    fuzz_bytes(caller, *rpc, BYTES)


def test_the_fuzz_met_the_limits_and_left_the_services_healthy(
    world: World, caller: Caller
) -> None:
    print(f"\nrate-limit refusals met by the fuzz, by RPC: {caller.rate_limited}")
    assert caller.rate_limited, "no fuzzed request was refused for its rate"
    assert set(caller.rate_limited) <= set(LIMITS_BY_RPC)
    assert_healthy(world)
