"""The shard ownership policy: balanced, expiring, taken over, handed back."""

from __future__ import annotations

import math

from svc_message.domain.ownership import dialable
from svc_message.domain.shard_policy import plan, quota
from svc_message.model.ownership import ShardLease

SHARDS = 64
LEASE = 4.0


def settle(
    processes: list[str],
    leases: dict[int, ShardLease],
    *,
    now: float,
    rounds: int = 4,
    draining: frozenset[str] = frozenset(),
) -> dict[int, ShardLease]:
    """Every process applies its plan in turn, as the conditional writes would."""
    live = [p for p in processes if p not in draining]
    for _ in range(rounds):
        for me in processes:
            step = plan(
                me=me, now=now, shards=SHARDS, live=live, leases=leases, draining=me in draining
            )
            for shard in step.release:
                leases[shard] = ShardLease(shard, me, f"{me}:1", expires_at=0.0, epoch=0)
            for shard in step.renew:
                lease = leases[shard]
                leases[shard] = ShardLease(shard, me, lease.address, now + LEASE, lease.epoch)
            for shard in step.claim:
                lease = leases.get(shard)
                if lease is None or lease.expires_at <= now or lease.owner == me:
                    epoch = 0 if lease is None else lease.epoch
                    leases[shard] = ShardLease(shard, me, f"{me}:1", now + LEASE, epoch + 1)
    return leases


def owners(leases: dict[int, ShardLease], *, now: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    for lease in leases.values():
        if lease.expires_at > now:
            counts[lease.owner] = counts.get(lease.owner, 0) + 1
    return counts


def test_one_process_owns_every_shard_at_once() -> None:
    step = plan(me="a", now=10.0, shards=SHARDS, live=["a"], leases={})
    assert sorted(step.claim) == list(range(SHARDS))
    assert not step.release
    assert not step.renew


def test_shards_spread_evenly_over_live_processes() -> None:
    for count in (2, 3, 5):
        processes = [f"p{i}" for i in range(count)]
        leases = settle(processes, {}, now=10.0)
        held = owners(leases, now=10.0)
        assert sum(held.values()) == SHARDS
        assert set(held) == set(processes)
        assert max(held.values()) <= math.ceil(SHARDS / count)


def test_a_process_that_joins_gets_its_share_and_the_others_release_extras() -> None:
    leases = settle(["a"], {}, now=10.0)
    assert owners(leases, now=10.0) == {"a": SHARDS}
    # "a" sees "b" join: it keeps its quota and releases the rest.
    step = plan(me="a", now=11.0, shards=SHARDS, live=["a", "b"], leases=leases)
    assert len(step.renew) == quota(SHARDS, 2) == 32
    assert len(step.release) == 32
    assert not step.claim
    leases = settle(["a", "b"], leases, now=11.0)
    assert owners(leases, now=11.0) == {"a": 32, "b": 32}


def test_unexpired_leases_of_another_process_are_never_claimed() -> None:
    leases = settle(["a"], {}, now=10.0)
    step = plan(me="b", now=12.0, shards=SHARDS, live=["b"], leases=leases)
    assert step.claim == ()


def test_the_shards_of_a_dead_process_are_taken_over_once_they_expire() -> None:
    leases = settle(["a", "b", "c"], {}, now=10.0)
    dead = {s for s, lease in leases.items() if lease.owner == "c"}
    assert dead
    # "c" stops renewing; until its leases expire nobody takes them.
    leases = settle(["a", "b"], leases, now=10.0 + LEASE - 0.5)
    assert {s for s, lease in leases.items() if lease.owner == "c"} == dead
    later = 10.0 + LEASE + 0.1
    leases = settle(["a", "b"], leases, now=later)
    assert owners(leases, now=later) == {"a": 32, "b": 32}
    assert all(leases[s].epoch == 2 for s in dead), "each takeover is a new epoch"


def test_a_draining_process_releases_everything_and_the_others_take_it() -> None:
    leases = settle(["a", "b"], {}, now=10.0)
    step = plan(me="a", now=11.0, shards=SHARDS, live=["b"], leases=leases, draining=True)
    assert len(step.release) == 32
    assert step.claim == ()
    assert not step.renew
    leases = settle(["a", "b"], leases, now=11.0, draining=frozenset({"a"}))
    assert owners(leases, now=11.0) == {"b": SHARDS}


def test_a_process_reclaims_its_own_expired_leases() -> None:
    leases = settle(["a"], {}, now=10.0)
    later = 10.0 + LEASE + 1
    step = plan(me="a", now=later, shards=SHARDS, live=["a"], leases=leases)
    assert sorted(step.claim) == list(range(SHARDS))
    assert not step.renew


def test_claims_of_two_processes_start_from_different_shards() -> None:
    a = plan(me="a", now=10.0, shards=SHARDS, live=["a", "b"], leases={})
    b = plan(me="b", now=10.0, shards=SHARDS, live=["a", "b"], leases={})
    assert len(a.claim) == len(b.claim) == 32
    # Ranked by a hash of (shard, process): far from the same order.
    assert len(set(a.claim[:8]) & set(b.claim[:8])) < 8


def test_owner_addresses_are_dialable_with_ipv6_pod_ips() -> None:
    assert dialable("10.1.2.3:7102") == "10.1.2.3:7102"
    assert dialable("fd00::5:7102") == "[fd00::5]:7102"
    assert dialable("[fd00::5]:7102") == "[fd00::5]:7102"
    assert dialable("svc-message-0.parley:7102") == "svc-message-0.parley:7102"
