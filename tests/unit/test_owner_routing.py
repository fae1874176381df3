"""Forwarding to a conversation's owner: relay, wait for a takeover, give up retryably."""

from __future__ import annotations

from typing import cast

import pytest

from parley_core.errors import Unavailable
from svc_message.domain.ownership import ShardOwnership
from svc_message.domain.routing import OwnerRouter
from svc_message.model.ownership import OwnerRefused, OwnerUnreachable


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


class Owners:
    """Stands in for ShardOwnership: who owns shard 0 is set by the test."""

    def __init__(self) -> None:
        self.local = False
        self.address: str | None = "10.0.0.2:7102"
        self.nudges = 0

    def shard_of(self, conversation_id: str) -> int:
        return 0

    def owns(self, shard: int) -> bool:
        return self.local

    def owner_address(self, shard: int) -> str | None:
        return self.address

    def nudge(self) -> None:
        self.nudges += 1


class Link:
    def __init__(self, outcomes: list[bytes | Exception]) -> None:
        self.outcomes = outcomes
        self.calls: list[tuple[str, str, bytes, str, float]] = []

    async def forward(
        self, address: str, method: str, request: bytes, *, bearer_token: str, timeout: float
    ) -> bytes:
        self.calls.append((address, method, request, bearer_token, timeout))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def router(owners: Owners, link: Link, clock: Clock, *, wait: float = 6.0) -> OwnerRouter:
    return OwnerRouter(
        cast(ShardOwnership, owners),
        link,
        wait_seconds=wait,
        forward_timeout_seconds=10.0,
        clock=clock,
        sleep=clock.sleep,
    )


async def test_the_owners_answer_is_relayed_with_the_callers_token() -> None:
    owners, link, clock = Owners(), Link([b"answer"]), Clock()
    answer = await router(owners, link, clock).forward(
        "c1", "SendMessage", b"request", bearer_token="tok", timeout=3.0
    )
    assert answer == b"answer"
    assert link.calls == [("10.0.0.2:7102", "SendMessage", b"request", "tok", 3.0)]


async def test_a_local_conversation_is_not_forwarded() -> None:
    owners, link, clock = Owners(), Link([]), Clock()
    owners.local = True
    routing = router(owners, link, clock)
    assert routing.is_local("c1")
    assert await routing.forward("c1", "SendMessage", b"r", bearer_token="t", timeout=None) is None
    assert link.calls == []


async def test_the_owners_error_passes_through_untouched() -> None:
    refused = OwnerRefused(7, "not a member", b"status")
    owners, link, clock = Owners(), Link([refused]), Clock()
    with pytest.raises(OwnerRefused) as caught:
        await router(owners, link, clock).forward(
            "c1", "SendMessage", b"r", bearer_token="t", timeout=None
        )
    assert caught.value is refused
    assert len(link.calls) == 1


async def test_an_unreachable_owner_is_retried_until_the_shard_is_taken_over() -> None:
    owners, clock = Owners(), Clock()
    link = Link([OwnerUnreachable("refused"), OwnerUnreachable("refused"), b"from the new owner"])
    answer = await router(owners, link, clock).forward(
        "c1", "SendMessage", b"r", bearer_token="t", timeout=None
    )
    assert answer == b"from the new owner"
    assert len(link.calls) == 3
    assert owners.nudges == 2, "each miss asks for a fresh look at the leases"


async def test_this_process_taking_the_shard_over_handles_it_itself() -> None:
    owners, clock = Owners(), Clock()
    owners.address = None

    class TakeOver(Link):
        async def forward(self, *args: object, **kwargs: object) -> bytes:
            raise AssertionError("nobody to forward to")

    routing = router(owners, TakeOver([]), clock)
    original_sleep = clock.sleep

    async def sleep(seconds: float) -> None:
        await original_sleep(seconds)
        owners.local = True

    routing._sleep = sleep
    assert await routing.forward("c1", "SendMessage", b"r", bearer_token="t", timeout=None) is None


async def test_without_an_owner_the_wait_ends_unavailable_never_aborted() -> None:
    owners, link, clock = Owners(), Link([OwnerUnreachable("x") for _ in range(100)]), Clock()
    started = clock.now
    routing = router(owners, link, clock, wait=2.0)
    with pytest.raises(Unavailable) as caught:
        await routing.forward("c1", "SendMessage", b"r", bearer_token="t", timeout=None)
    assert caught.value.retry_after_seconds
    assert clock.now - started <= 2.0
    assert routing.unowned == 1


async def test_the_callers_deadline_bounds_the_wait() -> None:
    owners, clock = Owners(), Clock()
    owners.address = None
    started = clock.now
    with pytest.raises(Unavailable):
        await router(owners, Link([]), clock, wait=6.0).forward(
            "c1", "SendMessage", b"r", bearer_token="t", timeout=0.5
        )
    assert clock.now - started <= 0.5
