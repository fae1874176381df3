"""parley_sdk's issue-5 surface against the real local stack: presence and privacy,
contacts, the presence subscription, typing over the delivery stream, push tokens and
do-not-disturb, and the CLI commands for them."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import pytest

from parley_cli.profiles import ProfileStore
from parley_dev.stack import LocalStack
from parley_sdk import (
    Availability,
    Client,
    Credentials,
    DeliveryStream,
    DoNotDisturb,
    InvalidArgumentError,
    Presence,
    PresenceSubscription,
    PresenceUpdate,
    PushProvider,
    StreamEvent,
    SyncCompleteEvent,
    TypingIndicatorEvent,
    TypingTracker,
    Visibility,
)
from tests.helpers import wait_until
from tests.integration.test_sdk_cli import read_until, run_cli, start_cli

WAIT = 20.0


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


async def sign_up(stack: LocalStack, prefix: str, *, instance: int = 0) -> Client:
    return await Client.sign_up(
        handle=unique(prefix),
        device_name="test",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[instance % len(stack.message_targets)],
        presence_target=stack.presence_target,
    )


async def _true(value: bool) -> bool:
    return value


@dataclass
class Watched:
    subscription: PresenceSubscription
    updates: list[PresenceUpdate] = field(default_factory=list)

    def latest(self, account_id: str) -> Presence | None:
        """The newest presence of an account across all updates so far."""
        for update in reversed(self.updates):
            if account_id in update.by_account:
                return update.by_account[account_id]
        return None

    async def wait_for(self, account_id: str, availability: Availability) -> Presence:
        async def reached() -> bool:
            latest = self.latest(account_id)
            return latest is not None and latest.availability is availability

        await wait_until(reached, timeout=WAIT, what=f"{account_id} to be {availability.name}")
        latest = self.latest(account_id)
        assert latest is not None
        return latest


@contextlib.asynccontextmanager
async def watching(client: Client, account_ids: list[str]) -> AsyncIterator[Watched]:
    watched = Watched(client.subscribe_presence(account_ids))

    async def drain() -> None:
        async for update in watched.subscription:
            watched.updates.append(update)

    task = asyncio.create_task(drain())
    try:
        await wait_until(lambda: _true(bool(watched.updates)), timeout=WAIT, what="the snapshot")
        yield watched
    finally:
        await watched.subscription.close()
        await asyncio.wait_for(task, 10)


@dataclass
class Collected:
    stream: DeliveryStream
    events: list[StreamEvent] = field(default_factory=list)

    def typing(self, conversation_id: str) -> list[TypingIndicatorEvent]:
        return [
            e
            for e in self.events
            if isinstance(e, TypingIndicatorEvent) and e.conversation_id == conversation_id
        ]


@contextlib.asynccontextmanager
async def collecting(client: Client) -> AsyncIterator[Collected]:
    """The client's delivery stream, synced, drained into a list by a background task."""
    collected = Collected(client.events())

    async def drain() -> None:
        async for event in collected.stream:
            collected.events.append(event)

    task = asyncio.create_task(drain())
    try:
        await wait_until(
            lambda: _true(any(isinstance(e, SyncCompleteEvent) for e in collected.events)),
            timeout=WAIT,
            what="the stream to sync",
        )
        yield collected
    finally:
        await collected.stream.close()
        await asyncio.wait_for(task, 10)


# -- presence ------------------------------------------------------------------------------


async def test_a_contact_sees_heartbeats_and_going_offline_live(stack: LocalStack) -> None:
    alice = await sign_up(stack, "alice")
    bob = await sign_up(stack, "bob", instance=1)
    carol = await sign_up(stack, "carol")
    async with alice, bob, carol:
        assert await alice.add_contacts([bob.account_id]) == 1
        assert await alice.add_contacts(bob.account_id) == 0, "adding is idempotent"
        assert [c.account_id async for c in alice.list_contacts()] == [bob.account_id]
        settings = await alice.update_presence_settings(
            online=Visibility.CONTACTS, last_seen=Visibility.CONTACTS
        )
        assert (settings.online, settings.last_seen, settings.invisible) == (
            Visibility.CONTACTS,
            Visibility.CONTACTS,
            False,
        )
        assert await alice.get_presence_settings() == settings
        # Reciprocity: bob sees alice only while he shows himself to her.
        await bob.update_presence_settings(
            online=Visibility.EVERYONE, last_seen=Visibility.EVERYONE
        )

        async with watching(bob, [alice.account_id]) as watched:
            first = watched.updates[0]
            assert first.snapshot
            assert [p.account_id for p in first.presences] == [alice.account_id]
            assert first.presences[0].availability is not Availability.ONLINE

            interval = await alice.heartbeat()
            assert timedelta(0) < interval < timedelta(minutes=5)
            await watched.wait_for(alice.account_id, Availability.ONLINE)
            [now_online] = await bob.get_presence([alice.account_id])
            assert now_online.online

            # carol is no contact of alice's: she sees nothing, as if there were no alice.
            [hidden] = await carol.get_presence(alice.account_id)
            assert (hidden.availability, hidden.last_seen) == (Availability.UNKNOWN, None)

            before = datetime.now(UTC)
            await alice.go_offline()
            gone = await watched.wait_for(alice.account_id, Availability.OFFLINE)
            assert gone.last_seen is not None
            assert before - timedelta(minutes=1) < gone.last_seen <= datetime.now(UTC)
            assert all(not u.snapshot for u in watched.updates[1:])

        assert await alice.remove_contacts([bob.account_id, carol.account_id]) == 1
        assert [c async for c in alice.list_contacts()] == []
        [now_hidden] = await bob.get_presence([alice.account_id])
        assert now_hidden.availability is Availability.UNKNOWN


async def test_keep_online_holds_a_device_online_until_the_block_ends(stack: LocalStack) -> None:
    alice = await sign_up(stack, "alice")
    bob = await sign_up(stack, "bob")
    async with alice, bob:
        await alice.update_presence_settings(
            online=Visibility.EVERYONE, last_seen=Visibility.EVERYONE
        )
        await bob.update_presence_settings(online=Visibility.EVERYONE)
        async with watching(bob, [alice.account_id]) as watched:
            async with alice.keep_online() as keeper:
                assert keeper.online and keeper.interval is not None
                await watched.wait_for(alice.account_id, Availability.ONLINE)
            await watched.wait_for(alice.account_id, Availability.OFFLINE)


# -- typing ---------------------------------------------------------------------------------


async def test_typing_reaches_the_other_members_stream_and_expires(stack: LocalStack) -> None:
    alice = await sign_up(stack, "alice")
    bob = await sign_up(stack, "bob", instance=1)
    async with alice, bob:
        view = await alice.create_direct_conversation(bob.account_id)
        conversation_id = view.conversation.conversation_id
        async with collecting(alice) as mine, collecting(bob) as theirs:
            # Sent again (the SDK renews a start every 3 s) until it arrives: the
            # other stream may still be joining the conversation's live feed.
            for _ in range(6):
                if theirs.typing(conversation_id):
                    break
                await mine.stream.typing(conversation_id)
                with contextlib.suppress(AssertionError):
                    await wait_until(
                        lambda: _true(bool(theirs.typing(conversation_id))),
                        timeout=3.5,
                        what="the typing indicator",
                    )
            assert theirs.typing(conversation_id), "no typing indicator reached bob"
            started = theirs.typing(conversation_id)[0]
            assert (started.account_id, started.typing) == (alice.account_id, True)
            assert timedelta(0) < started.expires_in <= timedelta(minutes=1)

            tracker = TypingTracker(ignore_account_id=bob.account_id)
            assert tracker.observe(started, now=0.0)
            assert tracker.typing(conversation_id, now=0.0) == [alice.account_id]
            expiry = started.expires_in.total_seconds()
            assert tracker.typing(conversation_id, now=expiry) == []

            assert await mine.stream.typing(conversation_id, False)
            await wait_until(
                lambda: _true(any(not e.typing for e in theirs.typing(conversation_id))),
                timeout=WAIT,
                what="the typing stop",
            )


async def test_a_delivery_stream_keeps_the_device_online(stack: LocalStack) -> None:
    alice = await sign_up(stack, "alice")
    bob = await sign_up(stack, "bob")
    async with alice, bob:
        await alice.update_presence_settings(online=Visibility.EVERYONE)
        await bob.update_presence_settings(online=Visibility.EVERYONE)
        async with watching(bob, [alice.account_id]) as watched, collecting(alice):
            await watched.wait_for(alice.account_id, Availability.ONLINE)
        # Closing the stream cleanly takes the device offline.
        await watched_offline(bob, alice.account_id)


async def watched_offline(viewer: Client, account_id: str) -> None:
    async def offline() -> bool:
        [presence] = await viewer.get_presence(account_id)
        return presence.availability is Availability.OFFLINE

    await wait_until(offline, timeout=WAIT, what="offline after the stream closed")


# -- push -------------------------------------------------------------------------------------


async def test_push_token_and_do_not_disturb_round_trip(stack: LocalStack) -> None:
    alice = await sign_up(stack, "alice")
    async with alice:
        registration = await alice.register_push_token(
            PushProvider.WEBHOOK, "https://push.example/alice", locale="en-GB"
        )
        assert (registration.device_id, registration.provider, registration.locale) == (
            alice.device_id,
            PushProvider.WEBHOOK,
            "en-GB",
        )
        replaced = await alice.register_push_token(PushProvider.FCM, "fcm-token-1")
        assert replaced.provider is PushProvider.FCM
        await alice.remove_push_token()
        await alice.remove_push_token()  # idempotent
        with pytest.raises(InvalidArgumentError):
            await alice.register_push_token(PushProvider.UNSPECIFIED, "x")

        assert not (await alice.get_push_settings()).do_not_disturb.enabled
        window = DoNotDisturb(start=time(22), end=time(7), time_zone="Europe/Berlin")
        assert (await alice.update_push_settings(do_not_disturb=window)).do_not_disturb == window
        assert (await alice.get_push_settings()).do_not_disturb == window
        with pytest.raises(InvalidArgumentError):
            await alice.update_push_settings(
                do_not_disturb=DoNotDisturb(start=time(1), end=time(2), time_zone="Mars/Olympus")
            )
        off = await alice.update_push_settings(do_not_disturb=DoNotDisturb.off())
        assert not off.do_not_disturb.enabled
        assert not (await alice.get_push_settings()).do_not_disturb.enabled


# -- the CLI ------------------------------------------------------------------------------------


@pytest.mark.slow
async def test_cli_presence_contacts_and_push(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = [
        "--keys-target",
        stack.keys_target,
        "--message-target",
        stack.message_targets[0],
        "--presence-target",
        stack.presence_target,
    ]
    alice, bob = unique("alice"), unique("bob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
    code, out, err = await run_cli(home, "whoami", "--profile", "a")
    assert code == 0, err
    assert f"presence={stack.presence_target}" in out, "the profile keeps the presence target"

    code, out, err = await run_cli(home, "contacts", "add", f"@{bob}", "--profile", "a")
    assert (code, out.strip()) == (0, "added 1 of 1"), err
    code, out, err = await run_cli(home, "contacts", "list", "--profile", "a")
    assert code == 0, err
    assert out.startswith(f"@{bob} added=")
    code, out, err = await run_cli(
        home,
        "presence",
        "settings",
        "--online",
        "contacts",
        "--last-seen",
        "nobody",
        "--profile",
        "a",
    )
    assert (code, out.strip()) == (0, "online=contacts last-seen=nobody invisible=no"), err
    code, out, err = await run_cli(
        home, "presence", "settings", "--online", "everyone", "--profile", "b"
    )
    assert code == 0, err
    assert out.startswith("online=everyone ")

    watcher = await start_cli(home, "presence", "watch", f"@{alice}", "--profile", "b")
    try:
        assert watcher.stdout is not None
        [snapshot] = await read_until(watcher.stdout, f"@{alice} ", timeout=30)
        assert " online " not in snapshot
        store = ProfileStore(home)

        def persist(credentials: Credentials) -> None:
            store.save(store.load("a").with_credentials(credentials))

        # Alice's CLI device, heartbeating as an app without a stream would.
        async with await Client.connect(
            keys_target=stack.keys_target,
            presence_target=stack.presence_target,
            credentials=store.load("a").credentials,
            on_credentials_changed=persist,
        ) as device:
            await device.heartbeat()
            await read_until(watcher.stdout, f"@{alice} online", timeout=30)
            await device.go_offline()
            [line] = await read_until(watcher.stdout, f"@{alice} offline", timeout=30)
            assert "last-seen=" not in line, "alice hides her last seen from everyone"
    finally:
        with contextlib.suppress(ProcessLookupError):
            watcher.send_signal(signal.SIGINT)
        _, watch_err = await asyncio.wait_for(watcher.communicate(), 30)
    assert watcher.returncode == 0, watch_err.decode()

    code, out, err = await run_cli(home, "presence", "get", f"@{alice}", "--profile", "b")
    assert code == 0, err
    assert out.startswith(f"@{alice} offline account=")

    code, out, err = await run_cli(
        home,
        "push",
        "dnd",
        "--from",
        "22:00",
        "--to",
        "07:00",
        "--tz",
        "Europe/Berlin",
        "--profile",
        "a",
    )
    assert (code, out.strip()) == (0, "dnd 22:00-07:00 Europe/Berlin"), err
    code, out, err = await run_cli(home, "push", "dnd", "--profile", "a")
    assert (code, out.strip()) == (0, "dnd 22:00-07:00 Europe/Berlin"), err
    code, out, err = await run_cli(home, "push", "dnd", "--off", "--profile", "a")
    assert (code, out.strip()) == (0, "dnd off"), err
    code, out, err = await run_cli(
        home, "push", "register", "--provider", "webhook", "--token", "https://x", "--profile", "a"
    )
    assert code == 0, err
    assert out.startswith("registered webhook token device=")
    code, out, err = await run_cli(home, "push", "remove", "--profile", "a")
    assert code == 0, err
