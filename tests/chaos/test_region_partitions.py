"""Three regions under random partitions, then the history checker (issue 20,
part 9; tests/region_checker.py).

Users are homed in each region; a group is owned by each, with members homed
in all three or in two of them (the third must never hold it), a direct
conversation crosses two, and one group per region has only members homed
there (residency pins it); every group is created through another region.
A bounded random workload (sends, edits, deletes for everyone) goes through
random regions while a seeded schedule cuts, heals, delays and slows the
links between them. A write refused with UNAVAILABLE (REGION_UNAVAILABLE while
its owner is cut off) or a deadline is recorded as uncertain, never as
acknowledged. After a final heal every uncertain send is sent again with its
request id through a random region: it must come back as the one message the
owner committed (or commits now). Then the test waits (bounded) until every
replica caught up, and the checker must find nothing: no acknowledged write
lost, none twice, seqs and versions gapless everywhere, replicas equal to
their owner, no deleted message with a body, and the pinned groups nowhere
but at home (MongoDB, Redis, S3).

The seed is printed; PARLEY_PARTITION_SEED replays a schedule (the workload's
interleaving with the network still varies from run to run).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import grpc
import pytest
import pytest_asyncio

from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.ids import region_number_of
from parley_dev.regions import RegionsStack
from tests.helpers import TEST_LIMITS
from tests.region_checker import (
    DELETE,
    EDIT,
    SEND,
    Attempt,
    History,
    body_hash,
    check,
    edit_bodies_of_deleted,
    uncertain_outcomes,
)
from tests.region_snapshot import read_regions
from tests.region_users import sign_up_in
from tests.store_scan import scan_all
from tests.users import Device, error_reason, rid

pytestmark = [pytest.mark.chaos, pytest.mark.slow, pytest.mark.timeout(420)]

EU, US, AP = "eu", "us", "ap"
REGIONS = (EU, US, AP)
OPERATIONS = 400
WORKERS = 4
WORKLOAD_SECONDS = 100.0
# Between one worker's writes, so the workload spans many network changes.
PAUSE_SECONDS = 0.15
CALL_SECONDS = 5.0
CONVERGE_SECONDS = 90.0
RETRY_SECONDS = 90.0
# What a refused or timed-out write is: it may have committed before the answer was lost.
UNCERTAIN = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def regions(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RegionsStack]:
    harness = RegionsStack(
        root=tmp_path_factory.mktemp("partitions"), regions=REGIONS, extra_config=TEST_LIMITS
    )
    async with harness:
        yield harness


async def _sign_up(regions: RegionsStack, home: str, handle: str | None = None) -> Device:
    return await sign_up_in(regions, home, handle=handle, timeout=CALL_SECONDS * 4)


@dataclass
class World:
    stubs: dict[str, mgrpc.MessageServiceStub]
    homes: dict[str, str]  # account id -> home region
    members: dict[str, list[Device]] = field(default_factory=dict)
    history: History = field(default_factory=History)
    # Acknowledged sends not yet deleted (or tried), and the ones a worker holds.
    live: dict[str, list[Attempt]] = field(default_factory=dict)
    busy: set[str] = field(default_factory=set)
    unexpected: list[str] = field(default_factory=list)
    refused: int = 0
    # Uncertain sends, retried with their request id after the heal.
    pending: list[tuple[Attempt, bytes, Device]] = field(default_factory=list)

    def region_name(self, conversation_id: str) -> str:
        return REGIONS[region_number_of(conversation_id) - 1]

    def add(self, conversation_id: str, devices: list[Device]) -> None:
        self.members[conversation_id] = devices
        self.live[conversation_id] = []
        self.history.plan(
            conversation_id,
            owner=self.region_name(conversation_id),
            homes={self.homes[d.account_id] for d in devices},
        )


async def _create(world: World, via: str, creator: Device, others: list[Device]) -> str:
    view = await world.stubs[via].CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(), title="partitions", member_account_ids=[m.account_id for m in others]
        ),
        metadata=creator.md,
        timeout=CALL_SECONDS * 4,
    )
    conversation_id: str = view.conversation.conversation_id
    world.add(conversation_id, [creator, *others])
    return conversation_id


async def _operate(world: World, rng: random.Random) -> None:
    conversation_id = rng.choice(sorted(world.members))
    via = rng.choice(REGIONS)
    stub = world.stubs[via]
    request_id = rid()
    choices = [a for a in world.live[conversation_id] if a.message_id not in world.busy]
    roll = rng.random()
    if roll < 0.7 or not choices:
        device = rng.choice(world.members[conversation_id])
        body = f"m {uuid.uuid4()}".encode()
        attempt = Attempt(
            SEND,
            conversation_id,
            request_id,
            device.account_id,
            via,
            False,
            body_hash=body_hash(body),
        )
        try:
            reply = await stub.SendMessage(
                mpb.SendMessageRequest(
                    request_id=request_id,
                    conversation_id=conversation_id,
                    type=mpb.MESSAGE_TYPE_TEXT,
                    body=body,
                ),
                metadata=device.md,
                timeout=CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if _failed(world, attempt, exc, body):
                world.pending.append((attempt, body, device))
            return
        done = Attempt(
            SEND,
            conversation_id,
            request_id,
            device.account_id,
            via,
            True,
            message_id=reply.message.message_id,
            seq=reply.message.seq,
            body_hash=attempt.body_hash,
        )
        world.history.record(done, body)
        world.live[conversation_id].append(done)
        return
    target = rng.choice(choices)
    device = next(d for d in world.members[conversation_id] if d.account_id == target.account_id)
    world.busy.add(target.message_id)
    try:
        if roll < 0.85:
            body = f"e {uuid.uuid4()}".encode()
            attempt = Attempt(
                EDIT,
                conversation_id,
                request_id,
                device.account_id,
                via,
                False,
                message_id=target.message_id,
                body_hash=body_hash(body),
            )
            try:
                await stub.EditMessage(
                    mpb.EditMessageRequest(
                        request_id=request_id,
                        conversation_id=conversation_id,
                        message_id=target.message_id,
                        body=body,
                    ),
                    metadata=device.md,
                    timeout=CALL_SECONDS,
                )
            except grpc.aio.AioRpcError as exc:
                _failed(world, attempt, exc, body)
                return
            world.history.record(_acknowledged(attempt), body)
            return
        # Deleted or maybe deleted: never edited or deleted again.
        world.live[conversation_id].remove(target)
        attempt = Attempt(
            DELETE,
            conversation_id,
            request_id,
            device.account_id,
            via,
            False,
            message_id=target.message_id,
        )
        try:
            await stub.DeleteMessage(
                mpb.DeleteMessageRequest(
                    request_id=request_id,
                    conversation_id=conversation_id,
                    message_id=target.message_id,
                    scope=mpb.DELETE_SCOPE_FOR_EVERYONE,
                ),
                metadata=device.md,
                timeout=CALL_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            _failed(world, attempt, exc, None)
            return
        world.history.record(_acknowledged(attempt))
    finally:
        world.busy.discard(target.message_id)


def _acknowledged(attempt: Attempt) -> Attempt:
    return Attempt(
        attempt.kind,
        attempt.conversation_id,
        attempt.request_id,
        attempt.account_id,
        attempt.via_region,
        True,
        message_id=attempt.message_id,
        seq=attempt.seq,
        body_hash=attempt.body_hash,
    )


def _failed(world: World, attempt: Attempt, exc: grpc.aio.AioRpcError, body: bytes | None) -> bool:
    """Records a failed write; True when its outcome is uncertain."""
    world.history.record(attempt, body)
    if exc.code() in UNCERTAIN:
        world.refused += 1
        return True
    world.unexpected.append(
        f"{attempt.kind} via {attempt.via_region} to {attempt.conversation_id}: "
        f"{exc.code().name} {error_reason(exc)} {exc.details()}"
    )
    return False


async def _retry_uncertain_sends(world: World, rng: random.Random) -> dict[str, str]:
    """Each uncertain send again, with its request id, through a random region
    (the region breakers may still refuse for a moment after the heal): the
    owner must answer with the message it committed, or commit it now, once."""
    started = time.monotonic()
    deadline = started + RETRY_SECONDS
    # Per route (region reached -> owner): refusals, and when it first answered.
    refusals: dict[str, int] = {}
    answered: dict[str, float] = {}
    for attempt, body, device in world.pending:
        owner = world.history.plans[attempt.conversation_id].owner
        while True:
            via = rng.choice(REGIONS)
            try:
                reply = await world.stubs[via].SendMessage(
                    mpb.SendMessageRequest(
                        request_id=attempt.request_id,
                        conversation_id=attempt.conversation_id,
                        type=mpb.MESSAGE_TYPE_TEXT,
                        body=body,
                    ),
                    metadata=device.md,
                    timeout=CALL_SECONDS,
                )
            except grpc.aio.AioRpcError as exc:
                refusals[f"{via}->{owner}"] = refusals.get(f"{via}->{owner}", 0) + 1
                if exc.code() not in UNCERTAIN or time.monotonic() >= deadline:
                    raise AssertionError(
                        f"retry of send {attempt.request_id} via {via}: "
                        f"{exc.code().name} {error_reason(exc)} {exc.details()}"
                    ) from exc
                await asyncio.sleep(0.5)
                continue
            retried = Attempt(
                SEND,
                attempt.conversation_id,
                attempt.request_id,
                attempt.account_id,
                via,
                True,
                message_id=reply.message.message_id,
                seq=reply.message.seq,
                body_hash=attempt.body_hash,
            )
            world.history.record(retried)
            answered.setdefault(f"{via}->{owner}", time.monotonic() - started)
            break
    return {
        route: f"{refusals.get(route, 0)} refused, first answered at {answered.get(route, 0):.1f} s"
        for route in sorted(refusals.keys() | answered.keys())
    }


async def _workload(world: World, rng: random.Random) -> int:
    remaining = OPERATIONS
    deadline = time.monotonic() + WORKLOAD_SECONDS

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            await _operate(world, rng)
            await asyncio.sleep(PAUSE_SECONDS)

    await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return OPERATIONS - remaining


async def _chaos(regions: RegionsStack, rng: random.Random, stop: asyncio.Event) -> list[str]:
    """Cuts, heals, delays and slows the links on a seeded schedule until ``stop``."""
    done: list[str] = []
    pairs = [(a, b) for a in REGIONS for b in REGIONS if a != b]
    while not stop.is_set():
        a, b = rng.choice(pairs)
        link = regions.proxy(a, b)
        roll = rng.random()
        if roll < 0.3:
            refuse = rng.random() < 0.5
            link.cut(refuse=refuse)
            if rng.random() < 0.5:
                regions.proxy(b, a).cut(refuse=refuse)
                done.append(f"cut {a}<->{b}")
            else:
                done.append(f"cut {a}->{b}")
        elif roll < 0.55:
            link.heal()
            regions.proxy(b, a).heal()
            done.append(f"heal {a}<->{b}")
        elif roll < 0.75:
            rtt = rng.choice((20.0, 80.0, 150.0))
            link.set_rtt(rtt, jitter_ms=rtt / 4)
            done.append(f"rtt {a}->{b} {rtt:.0f} ms")
        elif roll < 0.9:
            loss = rng.choice((0.01, 0.05))
            link.set_loss(loss)
            done.append(f"loss {a}->{b} {loss}")
        else:
            link.clear()
            done.append(f"clear {a}->{b}")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=rng.uniform(0.2, 1.0))
    return done


def _heal_all(regions: RegionsStack) -> None:
    for a in REGIONS:
        for b in REGIONS:
            if a != b:
                regions.proxy(a, b).heal()
                regions.proxy(a, b).clear()


async def test_random_partitions_lose_nothing_and_converge(regions: RegionsStack) -> None:
    seed = int(os.environ.get("PARLEY_PARTITION_SEED") or random.randrange(2**32))
    print(f"partition seed: {seed}")
    users = {r: [await _sign_up(regions, r), await _sign_up(regions, r)] for r in REGIONS}
    homes = {d.account_id: r for r, devices in users.items() for d in devices}
    channels = {r: grpc.aio.insecure_channel(regions.region(r).message_targets[0]) for r in REGIONS}
    try:
        world = World({r: mgrpc.MessageServiceStub(c) for r, c in channels.items()}, homes)
        for i, region in enumerate(REGIONS):
            # Created through another region: the creator's home owns it anyway.
            via = REGIONS[i - 1]
            first, second = users[region]
            # Members homed in every region for the first, in two for the others.
            others = [users[r][0] for r in REGIONS if r != region][: 2 if i == 0 else 1]
            await _create(world, via, first, [second, *others])
            # Only members homed here: pinned to this region.
            await _create(world, via, second, [first])
        ann, bob = users[EU][0], users[US][0]
        view = await world.stubs[AP].CreateDirectConversation(
            mpb.CreateDirectConversationRequest(request_id=rid(), peer_account_id=bob.account_id),
            metadata=ann.md,
            timeout=CALL_SECONDS * 4,
        )
        world.add(view.conversation.conversation_id, [ann, bob])
        assert {p.owner for p in world.history.plans.values()} == set(REGIONS)

        rng = random.Random(seed)
        stop = asyncio.Event()
        chaos = asyncio.create_task(_chaos(regions, random.Random(rng.random()), stop))
        try:
            issued = await _workload(world, rng)
        finally:
            stop.set()
            schedule = await chaos
            _heal_all(regions)
        print(f"network schedule: {schedule}")
        attempts = world.history.attempts
        acknowledged = {
            k: sum(a.acknowledged for a in attempts if a.kind == k) for k in (SEND, EDIT, DELETE)
        }
        print(f"issued {issued}, acknowledged {acknowledged}, uncertain {world.refused}")
        assert not world.unexpected, "\n".join(world.unexpected)
        assert acknowledged[SEND] >= OPERATIONS // 3
        assert acknowledged[EDIT] > 0 and acknowledged[DELETE] > 0
        assert world.refused > 0, "the schedule never refused a write: no partition was tested"

        healed = time.monotonic()
        total, committed = uncertain_outcomes(
            world.history, await read_regions(regions, world.history, scan=False)
        )
        print(f"uncertain writes {total}, committed at their owner anyway {committed}")
        routes = await _retry_uncertain_sends(world, rng)
        print(f"retried {len(world.pending)} uncertain sends in {time.monotonic() - healed:.1f} s")
        print(f"retries by route: {routes}")
        # Replication catches up after the heal: poll without the full scans.
        while True:
            problems = check(world.history, await read_regions(regions, world.history, scan=False))
            if not problems or time.monotonic() >= healed + CONVERGE_SECONDS:
                break
            await asyncio.sleep(1.0)
        print(f"converged {time.monotonic() - healed:.1f} s after the heal")
        snapshots = await read_regions(regions, world.history)
        problems = check(world.history, snapshots)
        leftovers = edit_bodies_of_deleted(world.history, snapshots)
        print(f"edit entries of deleted messages still holding a body: {len(leftovers)}")
        assert not problems, f"seed {seed}:\n" + "\n".join(problems)
        # The residency scan finds what it looks for where it belongs: a pinned
        # group's id and ciphertexts in its own region.
        pinned = next(c for c, p in world.history.plans.items() if p.homes == {p.owner})
        home = world.history.plans[pinned].owner
        stored = {e.body_hash for e in snapshots[home].entries[pinned]}
        bodies = [b for b in world.history.ciphertexts[pinned] if body_hash(b) in stored]
        needles = [pinned.encode(), *bodies[:3]]
        assert len(needles) > 1
        hits, _ = await scan_all(regions.region(home), needles)
        assert {h.needle for h in hits} == set(needles)
    finally:
        for channel in channels.values():
            await channel.close()
