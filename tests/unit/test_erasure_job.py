"""The erasure job of svc_keys against in-memory stores: steps in order,
each recorded once done, a failed step postponed and resumed, the record
stripped of personal data, and the handle held for the cooling-off period;
with peer regions, their steps after the local ones and each on its own (the
handle's release at a peer registrar, the wait for the peers' acknowledgement
of the revocations)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from parley_core.errors import InvalidArgument, Reason, Unavailable
from svc_keys.domain.erasure import ErasureHandler, ErasurePolicy
from svc_keys.model import Account, ErasureJob

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class Store:
    """ErasureStore in memory."""

    def __init__(self) -> None:
        self.docs: dict[str, dict[str, Any]] = {}
        self.holds: dict[str, datetime] = {}

    async def start(self, job: ErasureJob, *, holder: str, lease_until: datetime) -> ErasureJob:
        for doc in self.docs.values():
            if doc.get("job") and doc["job"].account_id == job.account_id:
                return doc["job"]  # type: ignore[no-any-return]
        self.docs[job.erasure_id] = {
            "job": job,
            "steps": [],
            "state": "running",
            "holder": holder,
            "lease": lease_until,
        }
        return job

    async def of_account(self, account_id: str) -> ErasureJob | None:
        for doc in self.docs.values():
            if doc.get("job") and doc["job"].account_id == account_id:
                return doc["job"]  # type: ignore[no-any-return]
        return None

    async def add_devices(self, erasure_id: str, device_ids: Sequence[str]) -> None:
        job = self.docs[erasure_id]["job"]
        merged = tuple(sorted(set(job.device_ids) | set(device_ids)))
        self.docs[erasure_id]["job"] = replace(job, device_ids=merged)

    async def claim(self, *, holder: str, now: datetime, lease: timedelta) -> ErasureJob | None:
        for doc in self.docs.values():
            if doc["state"] == "running" and doc["lease"] <= now:
                doc.update(holder=holder, lease=now + lease)
                return replace(doc["job"], steps=tuple(doc["steps"]))  # type: ignore[no-any-return]
        return None

    async def extend(self, erasure_id: str, *, holder: str, until: datetime) -> bool:
        doc = self.docs[erasure_id]
        if doc["holder"] != holder:
            return False
        doc["lease"] = until
        return True

    async def step_done(self, erasure_id: str, step: str) -> None:
        if step not in self.docs[erasure_id]["steps"]:
            self.docs[erasure_id]["steps"].append(step)

    async def release(self, erasure_id: str, *, holder: str, retry_at: datetime) -> None:
        self.docs[erasure_id]["lease"] = retry_at

    async def finish(self, erasure_id: str, *, now: datetime) -> None:
        doc = self.docs[erasure_id]
        job = doc.pop("job")
        doc.pop("holder")
        doc.update(state="done", finished_at=now, cold_deadline=job.cold_deadline)

    async def hold_handle(self, handle_key: str, *, until: datetime) -> None:
        self.holds[handle_key] = until

    async def handle_held(self, handle_key: str, *, now: datetime) -> bool:
        return handle_key in self.holds and self.holds[handle_key] > now


class Accounts:
    def __init__(self) -> None:
        self.account = Account("acc-1", "Alice", "Alice A.", datetime.fromtimestamp(T0, UTC))
        self.devices = {"dev-1": False, "dev-2": False}  # id -> revoked
        self.present = True

    async def account_by_id(self, account_id: str) -> Account | None:
        return self.account if self.present and account_id == "acc-1" else None

    async def device_ids_of(self, account_id: str) -> list[str]:
        return sorted(self.devices) if self.present else []

    async def revoke_device(self, device_id: str, *, now: datetime) -> bool:
        self.devices[device_id] = True
        return True

    async def handle_key_of(self, account_id: str) -> str | None:
        return "alice" if self.present else None

    async def delete_devices(self, account_id: str) -> None:
        self.devices.clear()

    async def delete_account(self, account_id: str) -> None:
        self.present = False


class Recorder:
    """Every other dependency: records what it was asked to forget."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        async def record(*args: Any, **kwargs: Any) -> int:
            self.calls.append((name, args or kwargs))
            return 0

        return record


class Eraser:
    def __init__(self, step: str, *, failures: int = 0, rounds: int = 1) -> None:
        self.step = step
        self.failures = failures
        self.rounds = rounds
        self.calls = 0

    async def erase(self, *, account_id: str, device_ids: Sequence[str], erasure_id: str) -> bool:
        self.calls += 1
        if self.failures:
            self.failures -= 1
            raise Unavailable("down", reason=Reason.DEPENDENCY_UNAVAILABLE)
        self.rounds -= 1
        return self.rounds <= 0


def build(erasers: list[Eraser]) -> tuple[ErasureHandler, Store, Accounts, Recorder, Clock]:
    store, accounts, recorder, clock = Store(), Accounts(), Recorder(), Clock()
    handler = ErasureHandler(
        store,  # type: ignore[arg-type]
        accounts,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        erasers=erasers,
        cold=recorder,
        buckets=recorder,
        policy=ErasurePolicy(
            handle_cooling_off=timedelta(days=30),
            cold_window=timedelta(days=30),
            lease=timedelta(seconds=60),
            poll_seconds=1,
            settle=timedelta(seconds=6),
        ),
        clock=clock,
    )
    return handler, store, accounts, recorder, clock


async def test_the_confirmation_must_be_the_handle() -> None:
    handler, store, *_ = build([])
    with pytest.raises(InvalidArgument):
        await handler.delete_account(account_id="acc-1", confirm_handle="bob", now=T0)
    assert store.docs == {}


async def test_devices_are_revoked_before_the_answer_and_the_rest_follows() -> None:
    message, presence = Eraser("message", rounds=3), Eraser("presence")
    handler, store, accounts, recorder, clock = build([message, presence])
    started = await handler.delete_account(account_id="acc-1", confirm_handle="ALICE", now=T0)
    assert all(accounts.devices.values())
    assert [name for name, _ in recorder.calls] == ["revoke_device", "revoke_device"]
    # The job was started by this process and holds its lease; another
    # round only takes it once the lease ran out.
    assert await handler.run_once() == 0
    clock.now += 61
    assert await handler.run_once() == 1
    assert message.calls == 3  # called until done
    doc = store.docs[started.erasure_id]
    assert doc["state"] == "done" and "job" not in doc
    assert doc["steps"] == ["devices", "keys", "limits", "account", "message", "presence", "cold"]
    assert not accounts.present and not accounts.devices
    assert await handler.handle_held("alice", now=clock.now + 29 * 86400)
    assert not await handler.handle_held("alice", now=clock.now + 31 * 86400)
    forgotten = [name for name, _ in recorder.calls]
    assert {"delete_device", "forget", "delete_for_device", "delete_from_devices"} <= set(forgotten)
    assert "forget_account" in forgotten and "schedule" in forgotten


async def test_a_failed_step_is_postponed_and_resumed_where_it_stopped() -> None:
    message, presence = Eraser("message"), Eraser("presence", failures=1)
    handler, store, accounts, _, clock = build([message, presence])
    started = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    clock.now += 61
    assert await handler.run_once() == 0
    steps = store.docs[started.erasure_id]["steps"]
    assert steps == ["devices", "keys", "limits", "account", "message"]
    assert not accounts.present  # its own stores first, whoever is down
    clock.now += 10
    assert await handler.run_once() == 1
    assert message.calls == 1 and presence.calls == 2
    assert store.docs[started.erasure_id]["state"] == "done"


async def test_a_repeated_delete_returns_the_running_job() -> None:
    handler, _, _, _, _ = build([Eraser("message", failures=100)])
    first = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    again = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0 + 5)
    assert again.erasure_id == first.erasure_id


async def test_the_other_services_wait_until_revocations_settled() -> None:
    message = Eraser("message")
    handler, store, _, _, clock = build([message])
    started = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    await store.release(started.erasure_id, holder="", retry_at=datetime.fromtimestamp(T0, UTC))
    clock.now = T0 + 1
    assert await handler.run_once() == 0
    assert message.calls == 0
    assert store.docs[started.erasure_id]["steps"] == ["devices", "keys", "limits", "account"]
    clock.now = T0 + 7
    assert await handler.run_once() == 1
    assert message.calls == 1


class Registry:
    """HandleRegistry with its registrar in the peer region ``far``."""

    def __init__(self, registrar: str | None = "far", *, failures: int = 0) -> None:
        self.registrar = registrar
        self.failures = failures
        self.released: list[tuple[str, str, str, datetime]] = []

    def remote_registrar(self, handle_key: str) -> str | None:
        return self.registrar

    async def release(self, handle_key: str, *, account_id: str, until: datetime) -> None:
        self.released.append(("here", handle_key, account_id, until))

    async def release_at(
        self, registrar: str, handle_key: str, *, account_id: str, until: datetime
    ) -> None:
        if self.failures:
            self.failures -= 1
            raise Unavailable("cut off", reason=Reason.REGION_UNAVAILABLE)
        self.released.append((registrar, handle_key, account_id, until))


class PeerRevocations:
    """Revocations with a per-peer outbox: ``owed[peer]`` devices unacknowledged."""

    def __init__(self, peers: Sequence[str]) -> None:
        self.peers = list(peers)
        self.owed: dict[str, set[str]] = {peer: set() for peer in peers}

    async def revoke_device(self, device_id: str, *, now: float) -> None:
        for peer in self.peers:
            self.owed[peer].add(device_id)

    async def unacknowledged(self, peer: str, device_ids: Sequence[str]) -> int:
        return len(self.owed.get(peer, set()) & set(device_ids))


def build_regions(
    erasers: list[Eraser], registry: Registry, revocations: PeerRevocations
) -> tuple[ErasureHandler, Store, Accounts, Clock]:
    store, accounts, recorder, clock = Store(), Accounts(), Recorder(), Clock()

    async def defer_handle_release(erasure_id: str, *, handle_key: str, registrar: str) -> None:
        job = store.docs[erasure_id]["job"]
        store.docs[erasure_id]["job"] = replace(
            job, handle_key=handle_key, handle_registrar=registrar
        )

    store.defer_handle_release = defer_handle_release  # type: ignore[attr-defined]
    handler = ErasureHandler(
        store,  # type: ignore[arg-type]
        accounts,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        recorder,  # type: ignore[arg-type]
        revocations,
        erasers=erasers,
        cold=recorder,
        buckets=recorder,
        policy=ErasurePolicy(
            handle_cooling_off=timedelta(days=30),
            cold_window=timedelta(days=30),
            lease=timedelta(seconds=60),
            poll_seconds=1,
        ),
        handles=registry,  # type: ignore[arg-type]
        peers=lambda: revocations.peers,
        clock=clock,
    )
    return handler, store, accounts, clock


async def test_a_cut_off_registrar_holds_back_only_its_own_step() -> None:
    near, far = Eraser("message@near"), Eraser("message@far", failures=2)
    registry = Registry("far", failures=2)
    revocations = PeerRevocations(["near", "far"])
    handler, store, accounts, clock = build_regions(
        [Eraser("message"), Eraser("presence"), near, far], registry, revocations
    )
    started = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    revocations.owed["near"].clear()  # near acknowledged at once, far is cut off
    clock.now += 61
    assert await handler.run_once() == 0
    steps = store.docs[started.erasure_id]["steps"]
    # Every local step and the reachable region's parts, while far is cut off.
    assert steps == [
        "devices",
        "keys",
        "limits",
        "account",
        "message",
        "presence",
        "cold",
        "message@near",
        "revocations@near",
    ]
    assert not accounts.present and registry.released == []
    assert handler.postponed == 3  # far's three steps, each counted
    assert await handler.handle_held("alice", now=clock.now)  # held here meanwhile
    clock.now += 10
    assert await handler.run_once() == 0  # still cut off
    # The link heals; far takes the revocations, then every part is done.
    revocations.owed["far"].clear()
    clock.now += 10
    assert await handler.run_once() == 1
    doc = store.docs[started.erasure_id]
    assert doc["state"] == "done"
    assert doc["steps"][-3:] == ["message@far", "handle@far", "revocations@far"]
    assert registry.released == [("far", "alice", "acc-1", started.handle_release_at)]
    assert near.calls == 1 and far.calls == 3


async def test_a_local_registrar_releases_in_the_account_step() -> None:
    registry = Registry(None)
    revocations = PeerRevocations(["far"])
    revocations.owed["far"].clear()
    handler, store, _, clock = build_regions([Eraser("message")], registry, revocations)
    started = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    revocations.owed["far"].clear()
    clock.now += 61
    assert await handler.run_once() == 1
    steps = store.docs[started.erasure_id]["steps"]
    assert "handle@far" not in steps and steps[-1] == "revocations@far"
    assert registry.released == [("here", "alice", "acc-1", started.handle_release_at)]


async def test_the_job_is_done_only_once_every_peer_acknowledged_the_revocations() -> None:
    revocations = PeerRevocations(["far"])
    handler, store, _, clock = build_regions(
        [Eraser("message")], registry := Registry(None), revocations
    )
    started = await handler.delete_account(account_id="acc-1", confirm_handle="alice", now=T0)
    assert revocations.owed["far"] == {"dev-1", "dev-2"}
    clock.now += 61
    assert await handler.run_once() == 0
    assert "revocations@far" not in store.docs[started.erasure_id]["steps"]
    assert store.docs[started.erasure_id]["state"] == "running"
    revocations.owed["far"].discard("dev-1")  # one of two acknowledged
    clock.now += 10
    assert await handler.run_once() == 0
    revocations.owed["far"].clear()
    clock.now += 10
    assert await handler.run_once() == 1
    assert store.docs[started.erasure_id]["steps"][-1] == "revocations@far"
    assert registry.released
