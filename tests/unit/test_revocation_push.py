"""The push of revocations to peer regions against an in-memory outbox: what
is recorded is owed to every peer, a peer that fails keeps its backlog and
is retried with a bounded, growing delay, acknowledged revocations leave the
outbox, a newer revocation of the same device is owed again, and the loops
follow the peers of the topology; the receiving servicer records what a
peer sends and refuses a malformed batch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from parley.keys.v1 import regions_pb2 as rpb
from parley_core.auth.revocations import Revocation
from parley_core.errors import InvalidArgument
from parley_core.regions import region_unavailable
from svc_keys.domain.revocation_push import BATCH_LIMIT, PushBackoff, RevocationPush
from svc_keys.servicer.regions import AccountRegionServicer

T0 = 1_800_000_000.0
LOOP_SECONDS = 5.0


class Outbox:
    """RevocationStore's outbox in memory, with the same rules."""

    def __init__(self) -> None:
        self.revoked: dict[str, float] = {}
        self.owed_to: dict[str, set[str]] = {}
        self.sources: dict[str, str] = {}
        self.peers_seen: set[str] = set()

    async def revoke_device(self, device_id: str, *, now: float, peers: Sequence[str]) -> None:
        self.revoked[device_id] = max(self.revoked.get(device_id, 0.0), now)
        self.owed_to.setdefault(device_id, set()).update(peers)

    async def apply_from_peer(
        self, revocations: Sequence[Revocation], *, source: str, now: float
    ) -> None:
        for r in revocations:
            self.revoked[r.device_id] = max(self.revoked.get(r.device_id, 0.0), r.revoked_at)
            self.sources.setdefault(r.device_id, source)

    async def unsent(self, peer: str, *, limit: int) -> list[Revocation]:
        owed = sorted((t, d) for d, t in self.revoked.items() if peer in self.owed_to.get(d, set()))
        return [Revocation(device_id=d, revoked_at=t) for t, d in owed[:limit]]

    async def mark_sent(self, peer: str, revocations: Sequence[Revocation]) -> None:
        for r in revocations:
            if self.revoked[r.device_id] <= r.revoked_at:
                self.owed_to[r.device_id].discard(peer)

    async def backlog(self, peer: str) -> int:
        return len(await self.unsent(peer, limit=10**9))

    async def add_peer(self, peer: str, *, now: float) -> bool:
        if peer in self.peers_seen:
            return False
        self.peers_seen.add(peer)
        for device_id in self.revoked:
            if device_id not in self.sources:
                self.owed_to.setdefault(device_id, set()).add(peer)
        return True


class Receivers:
    """Peer regions; ``down`` ones refuse as an unreachable region does."""

    def __init__(self) -> None:
        self.down: set[str] = set()
        self.received: dict[str, list[Revocation]] = {}
        self.calls: dict[str, int] = {}

    async def apply_revocations(self, region: str, revocations: Sequence[Revocation]) -> None:
        self.calls[region] = self.calls.get(region, 0) + 1
        if region in self.down:
            raise region_unavailable(region, "cut")
        self.received.setdefault(region, []).extend(revocations)


def _push(outbox: Outbox, receivers: Receivers, peers: list[str], **options: Any) -> RevocationPush:
    return RevocationPush(
        outbox,
        receivers,
        peers=lambda: list(peers),
        clock=lambda: T0,
        **options,
    )


async def _until(condition: object, what: str) -> None:
    deadline = time.monotonic() + LOOP_SECONDS
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.01)


def test_backoff_doubles_up_to_its_bound_with_jitter_below_it() -> None:
    backoff = PushBackoff(initial_seconds=0.5, maximum_seconds=10.0, jitter=0.2)
    delays = [backoff.delay(n, rand=lambda: 0.0) for n in range(8)]
    assert delays == [0.0, 0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert backoff.delay(10_000, rand=lambda: 0.0) == 10.0
    assert backoff.delay(3, rand=lambda: 1.0) == pytest.approx(1.6)
    for n in range(1, 40):
        assert 0.0 < backoff.delay(n) <= 10.0


async def test_a_revocation_is_owed_to_every_peer_and_leaves_once_acknowledged() -> None:
    outbox, receivers = Outbox(), Receivers()
    push = _push(outbox, receivers, ["us", "ap"])
    await push.revoke_device("d1", now=T0)
    assert outbox.owed_to["d1"] == {"us", "ap"}
    assert await push.push_once("us") is False
    assert receivers.received["us"] == [Revocation("d1", T0)]
    assert outbox.owed_to["d1"] == {"ap"}
    assert push.states["us"].sent == 1 and push.states["us"].failed == 0
    # Nothing left: no call at all.
    await push.push_once("us")
    assert receivers.calls["us"] == 1


async def test_an_unreachable_peer_keeps_its_backlog_and_gets_it_when_it_answers() -> None:
    outbox, receivers = Outbox(), Receivers()
    push = _push(outbox, receivers, ["us"])
    receivers.down.add("us")
    await push.revoke_device("d1", now=T0)
    await push.revoke_device("d2", now=T0 + 1)
    assert await push.push_once("us") is False
    assert await push.push_once("us") is False
    state = push.states["us"]
    assert (state.sent, state.failed, state.failures_in_a_row) == (0, 4, 2)
    assert await outbox.backlog("us") == 2
    receivers.down.clear()
    await push.push_once("us")
    assert [r.device_id for r in receivers.received["us"]] == ["d1", "d2"]
    assert (state.sent, state.failures_in_a_row) == (2, 0)
    assert await outbox.backlog("us") == 0


async def test_a_newer_revocation_sent_meanwhile_is_owed_again() -> None:
    outbox, receivers = Outbox(), Receivers()
    push = _push(outbox, receivers, ["us"])
    await push.revoke_device("d1", now=T0)
    batch = await outbox.unsent("us", limit=10)
    await push.revoke_device("d1", now=T0 + 5)
    await outbox.mark_sent("us", batch)
    assert await outbox.unsent("us", limit=10) == [Revocation("d1", T0 + 5)]


async def test_a_full_batch_asks_for_another_at_once() -> None:
    outbox, receivers = Outbox(), Receivers()
    push = _push(outbox, receivers, ["us"], batch=2)
    for n in range(3):
        await push.revoke_device(f"d{n}", now=T0 + n)
    assert await push.push_once("us") is True
    assert await push.push_once("us") is False
    assert len(receivers.received["us"]) == 3
    assert receivers.calls["us"] == 2
    assert RevocationPush(outbox, receivers, peers=list, batch=10**6)._batch == BATCH_LIMIT


async def test_revocations_received_from_a_peer_are_not_pushed_on() -> None:
    outbox, receivers = Outbox(), Receivers()
    push = _push(outbox, receivers, ["us"])
    await push.apply_from_peer([Revocation("d9", T0)], source="us")
    assert outbox.revoked == {"d9": T0} and outbox.sources == {"d9": "us"}
    await outbox.add_peer("us", now=T0)
    assert await outbox.unsent("us", limit=10) == []


async def test_the_loops_retry_a_cut_peer_and_catch_it_up_after_the_heal() -> None:
    outbox, receivers = Outbox(), Receivers()
    peers = ["us", "ap"]
    push = _push(
        outbox,
        receivers,
        peers,
        backoff=PushBackoff(initial_seconds=0.01, maximum_seconds=0.05),
        sweep_seconds=0.05,
    )
    # Made before the peers were first seen: owed to them when they are.
    await outbox.revoke_device("old", now=T0 - 60, peers=[])
    receivers.down.add("ap")
    task = asyncio.create_task(push.run())
    try:
        await push.revoke_device("d1", now=T0)
        await _until(lambda: len(receivers.received.get("us", [])) == 2, "us caught up")
        await _until(lambda: receivers.calls.get("ap", 0) >= 3, "ap retried")
        assert "ap" not in receivers.received
        await _until(lambda: push.states["ap"].backlog == 2, "ap's backlog sampled")
        receivers.down.clear()
        await _until(lambda: len(receivers.received.get("ap", [])) == 2, "ap caught up after heal")
        await _until(lambda: push.states["ap"].backlog == 0, "ap's backlog emptied")
        # A peer leaving the topology stops its loop and its metrics.
        peers.remove("ap")
        await _until(lambda: "ap" not in push.states, "ap's loop stopped")
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


def _request(count: int, *, device_id: str | None = None) -> Any:
    when = Timestamp()
    when.FromNanoseconds(int(T0 * 1e9))
    return rpb.ApplyRevocationsRequest(
        source_region="eu",
        revocations=[
            rpb.DeviceRevocation(device_id=device_id or str(uuid.uuid4()), revoke_time=when)
            for _ in range(count)
        ],
    )


async def test_the_receiving_end_records_what_a_peer_sends_and_checks_its_shape() -> None:
    outbox = Outbox()
    push = _push(outbox, Receivers(), [])
    servicer = AccountRegionServicer(None, push)  # type: ignore[arg-type]
    device_id = str(uuid.uuid4())
    await servicer.ApplyRevocations(_request(1, device_id=device_id), None)
    assert outbox.revoked == {device_id: T0} and outbox.sources == {device_id: "eu"}

    bad = [
        _request(BATCH_LIMIT + 1),
        _request(1, device_id="NOT-AN-ID"),
        rpb.ApplyRevocationsRequest(
            source_region="eu", revocations=[rpb.DeviceRevocation(device_id=device_id)]
        ),
        rpb.ApplyRevocationsRequest(revocations=[]),
    ]
    for request in bad:
        with pytest.raises(InvalidArgument):
            await servicer.ApplyRevocations(request, None)
    assert len(outbox.revoked) == 1
