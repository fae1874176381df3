"""svc_presence over real gRPC: heartbeats and expiry, privacy, batch reads,
live subscriptions, contacts, validation, durable last seen.

They use the session stack (default settings: a 45 s TTL, so users stay
online for the whole test); test_presence_expiry.py has those that need a
short TTL, small caps or a Redis restart. Helpers here are shared with it and
with tests/chaos/test_presence_outage.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

import grpc
import pytest

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.presence.v1 import presence_pb2 as pb
from parley.presence.v1 import presence_pb2_grpc as pgrpc
from parley_dev.stack import LocalStack
from svc_presence.domain import privacy
from svc_presence.model import LiveState, PresenceSettings, Visibility
from tests.helpers import http_get
from tests.integration.test_accounts import details
from tests.users import Device, sign_up, sign_up_many

E, C, N = pb.VISIBILITY_EVERYONE, pb.VISIBILITY_CONTACTS, pb.VISIBILITY_NOBODY
ONLINE, OFFLINE, UNKNOWN = (
    pb.AVAILABILITY_ONLINE,
    pb.AVAILABILITY_OFFLINE,
    pb.AVAILABILITY_UNSPECIFIED,
)

Seen = tuple[str, int, int | None]


def seen(presence: pb.Presence) -> Seen:
    last = presence.last_seen_time.ToMilliseconds() if presence.HasField("last_seen_time") else None
    return (presence.account_id, int(presence.availability), last)


async def settings(
    stub: pgrpc.PresenceServiceStub,
    device: Device,
    online: int = 0,
    last_seen: int = 0,
    invisible: bool | None = None,
) -> pb.PresenceSettings:
    request = pb.UpdatePresenceSettingsRequest(online=online, last_seen=last_seen)  # type: ignore[arg-type]
    if invisible is not None:
        request.invisible = invisible
    result: pb.PresenceSettings = await stub.UpdatePresenceSettings(request, metadata=device.md)
    return result


async def add_contacts(stub: pgrpc.PresenceServiceStub, owner: Device, *others: Device) -> int:
    reply = await stub.AddContacts(
        pb.AddContactsRequest(account_ids=[o.account_id for o in others]), metadata=owner.md
    )
    return int(reply.added_count)


async def get(stub: pgrpc.PresenceServiceStub, viewer: Device, ids: list[str]) -> list[Seen]:
    reply = await stub.GetPresence(pb.GetPresenceRequest(account_ids=ids), metadata=viewer.md)
    return [seen(p) for p in reply.presences]


async def own_last_seen(stub: pgrpc.PresenceServiceStub, device: Device) -> int:
    [(_, _, last)] = await get(stub, device, [device.account_id])
    assert last is not None
    return last


class Sub:
    """A SubscribePresence stream collecting its events in the background."""

    def __init__(self, stub: pgrpc.PresenceServiceStub, viewer: Device, ids: list[str]) -> None:
        self.call = stub.SubscribePresence(
            pb.SubscribePresenceRequest(account_ids=ids), metadata=viewer.md
        )
        self.events: list[pb.PresenceEvent] = []
        self.times: list[float] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for event in self.call:
                self.events.append(event)
                self.times.append(time.monotonic())
                self.arrived.set()
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self.error = exc
            self.arrived.set()

    @property
    def snapshot(self) -> list[Seen]:
        assert self.events and self.events[0].snapshot
        return [seen(p) for p in self.events[0].presences]

    def changes(self) -> list[Seen]:
        assert all(not e.snapshot for e in self.events[1:])
        return [seen(p) for e in self.events[1:] for p in e.presences]

    async def wait_for(
        self, predicate: Callable[[Sub], bool], *, timeout: float = 10.0, what: str = ""
    ) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            if self.error is not None and not predicate(self):
                raise AssertionError(f"stream failed: {self.error.code()} {self.error.details()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out waiting for {what}; got {self.events}")
            self.arrived.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), min(remaining, 0.25))

    async def started(self) -> Sub:
        await self.wait_for(lambda s: bool(s.events), what="the snapshot")
        return self

    async def close(self) -> None:
        self.call.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self.task


async def failure(call: Any) -> grpc.aio.AioRpcError:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc
    raise AssertionError("the call succeeded")


# -- heartbeats and reads ---------------------------------------------------------------


async def test_heartbeat_gives_the_ttl_and_a_third_of_it_as_interval(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub, stack: LocalStack
) -> None:
    alice = await sign_up(keys)
    before = int(time.time() * 1000)
    reply = await presence.Heartbeat(pb.HeartbeatRequest(), metadata=alice.md)
    ttl = stack.settings.presence.device_ttl_seconds
    assert reply.ttl.ToMilliseconds() == round(ttl * 1000)
    assert reply.interval.ToMilliseconds() == round(ttl * 1000 / 3)
    # A user always sees themself, whatever the settings.
    [(account, availability, last)] = await get(presence, alice, [alice.account_id])
    assert (account, availability) == (alice.account_id, ONLINE)
    assert last is not None and before - 1000 <= last <= int(time.time() * 1000) + 1000


async def test_get_presence_keeps_request_order_and_answers_duplicates_once(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    a, b, viewer = await sign_up_many(keys, 3)
    for user in (a, b):
        await settings(presence, user, E, E)
        await presence.Heartbeat(pb.HeartbeatRequest(), metadata=user.md)
    await settings(presence, viewer, E, E)
    ids = [b.account_id, a.account_id, b.account_id, viewer.account_id, a.account_id]
    got = await get(presence, viewer, ids)
    assert [g[0] for g in got] == [b.account_id, a.account_id, viewer.account_id]
    assert [g[1] for g in got] == [ONLINE, ONLINE, OFFLINE]  # the viewer never heartbeat
    # 256 distinct ids is the most, and fast.
    many = [a.account_id] + [f"0190d3a4-6f1e-7c2a-9b1e-{i:012x}" for i in range(255)]
    started = time.perf_counter()
    for _ in range(5):
        got = await get(presence, viewer, many)
    elapsed = (time.perf_counter() - started) / 5
    assert len(got) == 256 and got[0][1] == ONLINE
    assert all(g[1:] == (UNKNOWN, None) for g in got[1:])
    print(f"\nGetPresence of 256 users: {elapsed * 1000:.1f} ms")


# Target settings (online, last_seen, invisible), viewer settings, and
# (target lists viewer, viewer lists target).
TARGET_SETTINGS = [(E, E, False), (E, C, False), (E, N, False), (C, C, False), (C, N, False)]
TARGET_SETTINGS += [(N, N, False), (E, E, True)]
VIEWER_SETTINGS = [(E, E, False), (E, N, False), (C, C, False), (N, N, False), (E, E, True)]
RELATIONS = [(False, False), (True, False), (False, True), (True, True)]


def _model(values: tuple[int, int, bool]) -> PresenceSettings:
    return PresenceSettings(Visibility(values[0]), Visibility(values[1]), values[2])


async def test_privacy_matrix_over_grpc(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    """Every target setting against every viewer setting and every contact
    relation, each pair through GetPresence, checked against the policy."""
    targets = await sign_up_many(keys, len(TARGET_SETTINGS), prefix="target")
    viewer_rows = [(v, r) for v in VIEWER_SETTINGS for r in RELATIONS]
    viewers = await sign_up_many(keys, len(viewer_rows), prefix="viewer")
    for user, values in [
        *zip(targets, TARGET_SETTINGS, strict=True),
        *zip(viewers, [v for v, _ in viewer_rows], strict=True),
    ]:
        await settings(presence, user, *values)
    for target in targets:
        listed = [v for v, (_, (t_lists, _)) in zip(viewers, viewer_rows, strict=True) if t_lists]
        assert await add_contacts(presence, target, *listed) == len(listed)
    for viewer, (_, (_, v_lists)) in zip(viewers, viewer_rows, strict=True):
        if v_lists:
            await add_contacts(presence, viewer, *targets)
    await asyncio.gather(
        *(presence.Heartbeat(pb.HeartbeatRequest(), metadata=t.md) for t in targets)
    )
    last_seen = {t.account_id: await own_last_seen(presence, t) for t in targets}
    ids = [t.account_id for t in targets]
    checked = 0
    for viewer, (viewer_values, (t_lists, v_lists)) in zip(viewers, viewer_rows, strict=True):
        got = await get(presence, viewer, ids)
        for target, target_values, actual in zip(targets, TARGET_SETTINGS, got, strict=True):
            rule = privacy.rule(
                viewer_id=viewer.account_id,
                target_id=target.account_id,
                viewer=_model(viewer_values),
                target=_model(target_values),
                target_lists_viewer=t_lists,
                viewer_lists_target=v_lists,
            )
            expected = privacy.view(
                target.account_id, rule, LiveState(True, last_seen[target.account_id])
            )
            case = f"viewer {viewer_values} {t_lists=} {v_lists=}, target {target_values}"
            assert actual == (
                expected.account_id,
                int(expected.availability),
                expected.last_seen_ms,
            ), case
            checked += 1
    assert checked == 140
    # Spot checks in plain words, so the matrix cannot pass by agreeing with a broken policy.
    everyone, mutual_viewer = targets[0], viewers[3 * 0 + 3]  # (E, E) viewer, both listing
    assert (await get(presence, mutual_viewer, [everyone.account_id]))[0][1:] == (
        ONLINE,
        last_seen[everyone.account_id],
    )
    stranger_of_contacts_only = viewers[0]  # (E, E) viewer, no relation
    assert (await get(presence, stranger_of_contacts_only, [targets[3].account_id]))[0][1:] == (
        UNKNOWN,
        None,
    )


async def test_what_is_hidden_looks_exactly_like_an_unknown_account(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    hiding, invisible, viewer = await sign_up_many(keys, 3)
    await settings(presence, hiding, N, N)
    await settings(presence, invisible, E, E, invisible=True)
    await settings(presence, viewer, E, E)
    for user in (hiding, invisible):
        await add_contacts(presence, user, viewer)
        await presence.Heartbeat(pb.HeartbeatRequest(), metadata=user.md)
    nobody = "0190d3a4-6f1e-7c2a-9b1e-000000000bad"
    reply = await presence.GetPresence(
        pb.GetPresenceRequest(account_ids=[hiding.account_id, invisible.account_id, nobody]),
        metadata=viewer.md,
    )
    unknown = pb.Presence(account_id=nobody)
    assert reply.presences[2] == unknown
    for got, account in zip(reply.presences[:2], (hiding, invisible), strict=True):
        assert got == pb.Presence(account_id=account.account_id)
        assert (
            got.SerializeToString()
            == pb.Presence(account_id=account.account_id).SerializeToString()
        )
    # Invisible users, by reciprocity, see nobody either.
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=viewer.md)
    assert (await get(presence, invisible, [viewer.account_id]))[0][1:] == (UNKNOWN, None)
    assert (await get(presence, invisible, [invisible.account_id]))[0][1] == ONLINE


# -- subscriptions ------------------------------------------------------------------------


async def test_a_change_reaches_exactly_the_subscribers_allowed_to_see_it(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    target = await sign_up(keys)
    allowed = await sign_up_many(keys, 8, prefix="friend")
    strangers = await sign_up_many(keys, 6, prefix="stranger")
    one_sided = await sign_up_many(keys, 6, prefix="fan")  # listed by the target only
    await add_contacts(presence, target, *allowed, *one_sided)
    for friend in allowed:
        await add_contacts(presence, friend, target)
    subs = {
        d.account_id: await Sub(presence, d, [target.account_id]).started()
        for d in (*allowed, *strangers, *one_sided)
    }
    try:
        for d in allowed:
            assert subs[d.account_id].snapshot == [(target.account_id, OFFLINE, None)]
        for d in (*strangers, *one_sided):
            assert subs[d.account_id].snapshot == [(target.account_id, UNKNOWN, None)]
        await presence.Heartbeat(pb.HeartbeatRequest(), metadata=target.md)
        at = await own_last_seen(presence, target)
        for d in allowed:
            await subs[d.account_id].wait_for(lambda s: len(s.events) == 2, what="online")
        await presence.GoOffline(pb.GoOfflineRequest(), metadata=target.md)
        for d in allowed:
            await subs[d.account_id].wait_for(lambda s: len(s.events) == 3, what="offline")
        await asyncio.sleep(0.5)  # anything sent to the others would be here by now
        for d in allowed:
            changes = subs[d.account_id].changes()
            assert changes[0] == (target.account_id, ONLINE, at)
            assert changes[1][:2] == (target.account_id, OFFLINE) and changes[1][2] >= at
            assert len(changes) == 2
        for d in (*strangers, *one_sided):
            assert subs[d.account_id].changes() == [], "a change leaked to a hidden viewer"
            assert subs[d.account_id].error is None
    finally:
        for sub in subs.values():
            await sub.close()


async def test_go_offline_is_seen_within_a_sweep_interval(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub, stack: LocalStack
) -> None:
    alice = await sign_up(keys)
    sub = await Sub(presence, alice, [alice.account_id]).started()  # self is always visible
    try:
        await presence.Heartbeat(pb.HeartbeatRequest(), metadata=alice.md)
        await sub.wait_for(lambda s: len(s.events) == 2, what="online")
        sent = time.monotonic()
        await presence.GoOffline(pb.GoOfflineRequest(), metadata=alice.md)
        await sub.wait_for(lambda s: len(s.events) == 3, what="offline")
        delay = sub.times[2] - sent
        assert sub.changes()[1][1] == OFFLINE
        # GoOffline wakes the sweeper; without that it would take up to an interval.
        assert delay < stack.settings.presence.sweep_interval_seconds, delay
        print(f"\nGoOffline to the subscriber's OFFLINE: {delay * 1000:.0f} ms")
    finally:
        await sub.close()


async def test_settings_and_contact_changes_reveal_and_hide_in_live_subscriptions(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    target, viewer = await sign_up_many(keys, 2)
    await settings(presence, target, E, E)
    await add_contacts(presence, viewer, target)  # the viewer's own "contacts" admits the target
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=target.md)
    at = await own_last_seen(presence, target)
    sub = await Sub(presence, viewer, [target.account_id]).started()
    t = target.account_id
    # Each step is started only when its turn comes (a gRPC call starts when made).
    steps: list[tuple[Callable[[], Any], Seen]] = [
        (lambda: settings(presence, target, N, N), (t, UNKNOWN, None)),
        (lambda: settings(presence, target, E, N), (t, ONLINE, None)),
        (lambda: settings(presence, target, E, E), (t, ONLINE, at)),
        (lambda: settings(presence, viewer, invisible=True), (t, UNKNOWN, None)),
        (lambda: settings(presence, viewer, invisible=False), (t, ONLINE, at)),
        (
            lambda: presence.RemoveContacts(
                pb.RemoveContactsRequest(account_ids=[t]), metadata=viewer.md
            ),
            (t, UNKNOWN, None),
        ),
        (lambda: add_contacts(presence, viewer, target), (t, ONLINE, at)),
    ]
    try:
        assert sub.snapshot == [(t, ONLINE, at)]
        for count, (change, expected) in enumerate(steps, start=1):
            await change()
            await sub.wait_for(lambda s, n=count: len(s.changes()) >= n, what=str(expected))
            assert sub.changes()[-1] == expected
        # A change that changes nothing visible is not sent.
        await settings(presence, target, E, E)
        await asyncio.sleep(0.5)
        assert len(sub.changes()) == len(steps)
    finally:
        await sub.close()


async def test_subscribe_validates_its_request(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    alice = await sign_up(keys)
    for ids, field in [([], "account_ids"), (["nope"], "account_ids[0]")]:
        sub = Sub(presence, alice, ids)
        await sub.wait_for(lambda s: s.error is not None, what="an error")
        assert sub.error is not None
        assert sub.error.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert details(sub.error)[1] == [field]


# -- contacts -------------------------------------------------------------------------------


async def test_contacts_are_idempotent_and_page_oldest_first(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    owner = await sign_up(keys)
    others = await sign_up_many(keys, 7)
    assert await add_contacts(presence, owner, *others[:4]) == 4
    assert await add_contacts(presence, owner, *others[2:], others[2]) == 3  # 2 and 3 known
    removed = await presence.RemoveContacts(
        pb.RemoveContactsRequest(account_ids=[others[0].account_id, others[0].account_id]),
        metadata=owner.md,
    )
    assert removed.removed_count == 1
    again = await presence.RemoveContacts(
        pb.RemoveContactsRequest(account_ids=[others[0].account_id]), metadata=owner.md
    )
    assert again.removed_count == 0
    pages, token = [], ""
    for _ in range(10):
        page = await presence.ListContacts(
            pb.ListContactsRequest(page_size=2, page_token=token), metadata=owner.md
        )
        pages.append([c.account_id for c in page.contacts])
        token = page.next_page_token
        if not token:
            break
    first_batch = sorted(o.account_id for o in others[1:4])
    second_batch = sorted(o.account_id for o in others[4:])
    assert [a for p in pages for a in p] == first_batch + second_batch
    assert [len(p) for p in pages] == [2, 2, 2]
    # A token belongs to its caller.
    page = await presence.ListContacts(pb.ListContactsRequest(page_size=2), metadata=owner.md)
    error = await failure(
        presence.ListContacts(
            pb.ListContactsRequest(page_token=page.next_page_token), metadata=others[0].md
        )
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert details(error) == ("ERROR_REASON_PAGE_TOKEN_INVALID", ["page_token"])


# -- validation and authentication -----------------------------------------------------------

TOO_MANY = [f"0190d3a4-6f1e-7c2a-9b1e-{i:012x}" for i in range(257)]
GOOD_ID = "0190d3a4-6f1e-7c2a-9b1e-2f6a8c1d4e5f"


@pytest.mark.parametrize(
    ("method", "request_", "field"),
    [
        ("GetPresence", pb.GetPresenceRequest(), "account_ids"),
        ("GetPresence", pb.GetPresenceRequest(account_ids=TOO_MANY), "account_ids"),
        ("GetPresence", pb.GetPresenceRequest(account_ids=[GOOD_ID, "Bad"]), "account_ids[1]"),
        ("AddContacts", pb.AddContactsRequest(), "account_ids"),
        ("AddContacts", pb.AddContactsRequest(account_ids=TOO_MANY), "account_ids"),
        ("RemoveContacts", pb.RemoveContactsRequest(account_ids=["x"]), "account_ids[0]"),
        ("UpdatePresenceSettings", pb.UpdatePresenceSettingsRequest(online=7), "online"),  # type: ignore[arg-type]
        ("UpdatePresenceSettings", pb.UpdatePresenceSettingsRequest(last_seen=-1), "last_seen"),  # type: ignore[arg-type]
        (
            "UpdatePresenceSettings",
            pb.UpdatePresenceSettingsRequest(online=C, last_seen=E),
            "last_seen",
        ),
        ("UpdatePresenceSettings", pb.UpdatePresenceSettingsRequest(online=N), "online"),
        ("ListContacts", pb.ListContactsRequest(page_size=-1), "page_size"),
        ("ListContacts", pb.ListContactsRequest(page_token="garbage!"), "page_token"),
    ],
)
async def test_bad_requests_name_the_field(
    keys: kgrpc.AccountServiceStub,
    presence: pgrpc.PresenceServiceStub,
    method: str,
    request_: Any,
    field: str,
) -> None:
    alice = await sign_up(keys)
    error = await failure(getattr(presence, method)(request_, metadata=alice.md))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error
    assert details(error)[1] == [field], error.details()


async def test_adding_yourself_is_refused(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    alice = await sign_up(keys)
    error = await failure(
        presence.AddContacts(
            pb.AddContactsRequest(account_ids=[GOOD_ID, alice.account_id]), metadata=alice.md
        )
    )
    assert details(error)[1] == ["account_ids[1]"]


UNARY = {
    "Heartbeat": pb.HeartbeatRequest(),
    "GoOffline": pb.GoOfflineRequest(),
    "GetPresence": pb.GetPresenceRequest(account_ids=[GOOD_ID]),
    "GetPresenceSettings": pb.GetPresenceSettingsRequest(),
    "UpdatePresenceSettings": pb.UpdatePresenceSettingsRequest(online=E),
    "AddContacts": pb.AddContactsRequest(account_ids=[GOOD_ID]),
    "RemoveContacts": pb.RemoveContactsRequest(account_ids=[GOOD_ID]),
    "ListContacts": pb.ListContactsRequest(),
}


@pytest.mark.parametrize("method", [*UNARY, "SubscribePresence"])
@pytest.mark.parametrize("metadata", [(), (("authorization", "Bearer forged.token.here"),)])
async def test_every_rpc_needs_a_valid_token(
    presence: pgrpc.PresenceServiceStub, method: str, metadata: tuple[tuple[str, str], ...]
) -> None:
    if method == "SubscribePresence":
        call = presence.SubscribePresence(
            pb.SubscribePresenceRequest(account_ids=[GOOD_ID]), metadata=metadata
        )

        async def first() -> Any:
            async for event in call:
                return event
            return None

        error = await failure(first())
    else:
        error = await failure(getattr(presence, method)(UNARY[method], metadata=metadata))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_settings_round_trip(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub
) -> None:
    alice = await sign_up(keys)
    fresh = await presence.GetPresenceSettings(pb.GetPresenceSettingsRequest(), metadata=alice.md)
    assert (fresh.online, fresh.last_seen, fresh.invisible) == (C, C, False)
    assert not fresh.HasField("update_time")
    changed = await settings(presence, alice, online=E)
    assert (changed.online, changed.last_seen, changed.invisible) == (E, C, False)
    assert changed.HasField("update_time")
    kept = await settings(presence, alice, invisible=True)
    assert (kept.online, kept.last_seen, kept.invisible) == (E, C, True)
    read = await presence.GetPresenceSettings(pb.GetPresenceSettingsRequest(), metadata=alice.md)
    assert read == kept


async def test_metrics_are_exported(
    keys: kgrpc.AccountServiceStub, presence: pgrpc.PresenceServiceStub, stack: LocalStack
) -> None:
    alice = await sign_up(keys)
    await presence.Heartbeat(pb.HeartbeatRequest(), metadata=alice.md)
    status, body = await http_get(stack.presence_metrics_url)
    assert status == 200
    for name in (
        "parley_presence_heartbeats_total",
        'parley_presence_transitions_total{to="online"}',
        'parley_presence_transitions_total{to="offline"}',
        "parley_presence_subscriptions_open",
        "parley_presence_events_pushed_total",
        "parley_presence_redis_errors_total",
        'parley_rpc_requests_total{code="OK",method="Heartbeat",service="presence"}',
    ):
        assert name in body, name
    heartbeats = next(
        float(line.split()[-1])
        for line in body.splitlines()
        if line.startswith("parley_presence_heartbeats_total ")
    )
    assert heartbeats >= 1
