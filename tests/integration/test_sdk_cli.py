"""parley_sdk and the chat CLI against the real local stack."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import stat
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley_dev.stack import LocalStack
from parley_sdk import (
    Client,
    Direction,
    HandleTakenError,
    InvalidArgumentError,
    MessageEvent,
    NotFoundError,
    StreamEvent,
    SyncCompleteEvent,
    UnauthenticatedError,
)
from tests.helpers import wait_until

# The chat client as `pip install ./cli` installs it.
CLI = [sys.executable, "-m", "parley_cli"]


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


@contextlib.asynccontextmanager
async def collecting(client: Client) -> AsyncIterator[list[StreamEvent]]:
    """Bob's delivery stream, drained into a list by a background task."""
    events: list[StreamEvent] = []
    stream = client.events()

    async def drain() -> None:
        async for event in stream:
            events.append(event)

    task = asyncio.create_task(drain())
    try:
        yield events
    finally:
        await stream.close()
        await asyncio.wait_for(task, 10)


def messages_in(events: list[StreamEvent], conversation_id: str) -> list[bytes]:
    return [
        e.message.body
        for e in events
        if isinstance(e, MessageEvent) and e.message.conversation_id == conversation_id
    ]


async def test_sdk_sign_up_send_and_receive_live(stack: LocalStack) -> None:
    alice_handle, bob_handle = unique("alice"), unique("bob")
    alice = await Client.sign_up(
        handle=alice_handle,
        display_name="Alice",
        device_name="laptop",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
    )
    bob = await Client.sign_up(
        handle=bob_handle,
        device_name="phone",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[-1],
    )
    async with alice, bob:
        found = await alice.get_account(handle=f"@{bob_handle}")
        assert found.account_id == bob.account_id
        view = await alice.create_direct_conversation(bob.account_id)
        conversation_id = view.conversation.conversation_id
        # From either side it is the same conversation.
        again = await bob.create_direct_conversation(alice.account_id)
        assert again.conversation.conversation_id == conversation_id

        async with collecting(bob) as events:
            await wait_until(
                lambda: _true(any(isinstance(e, SyncCompleteEvent) for e in events)),
                timeout=15,
                what="bob's stream to sync",
            )
            sent = await alice.send_message(conversation_id, b"hello bob")
            assert sent.seq == 1
            await wait_until(
                lambda: _true(messages_in(events, conversation_id) == [b"hello bob"]),
                timeout=15,
                what="bob to receive alice's message live",
            )
            received = next(e.message for e in events if isinstance(e, MessageEvent))
            assert received.sender_account_id == alice.account_id
            assert received.message_id == sent.message_id

            # Auto-ack raised bob's delivered watermark: alice sees the receipt.
            async def delivered() -> bool:
                current = await alice.get_conversation(conversation_id)
                marks = {w.account_id: w for w in current.member_watermarks}
                return marks[bob.account_id].delivered_seq >= 1

            await wait_until(delivered, timeout=15, what="the delivery receipt")

        watermarks = await bob.mark_read(conversation_id, 1)
        assert watermarks.read_seq == 1
        history = [
            m.body async for m in bob.list_messages(conversation_id, direction=Direction.FORWARD)
        ]
        assert history == [b"hello bob"]
        inbox = [v async for v in bob.list_conversations(page_size=1)]
        assert [v.conversation.conversation_id for v in inbox] == [conversation_id]
        assert inbox[0].unread_count == 0


async def test_sdk_errors_and_token_rotation(stack: LocalStack) -> None:
    keys, message = stack.keys_target, stack.message_targets[0]
    handle = unique("carol")
    carol = await Client.sign_up(
        handle=handle, device_name="cli", keys_target=keys, message_target=message
    )
    async with carol:
        with pytest.raises(HandleTakenError):
            await Client.sign_up(handle=handle.upper(), device_name="cli", keys_target=keys)
        with pytest.raises(InvalidArgumentError) as invalid:
            await Client.sign_up(handle="1nvalid handle", device_name="cli", keys_target=keys)
        assert any("handle" in field for field, _ in invalid.value.field_violations)
        with pytest.raises(NotFoundError):
            await carol.get_account(handle=unique("nobody"))

        old = carol.credentials
        assert old is not None
        new = await carol.refresh()
        assert new.refresh_token != old.refresh_token
        assert new.account_id == old.account_id
        assert (await carol.get_account()).handle == handle

        # Refresh tokens are single use: the rotated-out one is refused.
        async with await Client.connect(credentials=old, keys_target=keys) as stale:
            with pytest.raises(UnauthenticatedError):
                await stale.refresh()

        linked = await carol.register_device(name="tablet")
        async with await Client.connect(credentials=linked.credentials, keys_target=keys) as tablet:
            assert (await tablet.get_account()).account_id == carol.account_id
            await carol.revoke_device(linked.device.device_id)
            with pytest.raises(UnauthenticatedError):
                await tablet.get_account()


async def _true(value: bool) -> bool:
    return value


# -- the CLI --------------------------------------------------------------------------


async def start_cli(home: Path, *args: str, stdin: bool = False) -> asyncio.subprocess.Process:
    """A `parley` command running under ``home``, its output piped."""
    return await asyncio.create_subprocess_exec(
        *CLI,
        *args,
        env={**os.environ, "PARLEY_HOME": str(home)},
        stdin=asyncio.subprocess.PIPE if stdin else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def run_cli(
    home: Path, *args: str, stdin: bytes | None = None, timeout: float = 60
) -> tuple[int, str, str]:
    process = await start_cli(home, *args, stdin=stdin is not None)
    out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def read_until(stream: asyncio.StreamReader, needle: str, *, timeout: float) -> list[str]:
    """Lines read from ``stream`` up to and including the first containing ``needle``."""
    lines: list[str] = []

    async def scan() -> list[str]:
        while True:
            raw = await stream.readline()
            if not raw:
                raise AssertionError(f"output ended before {needle!r}; got {lines}")
            lines.append(raw.decode().rstrip("\n"))
            if needle in lines[-1]:
                return lines

    try:
        return await asyncio.wait_for(scan(), timeout)
    except TimeoutError:
        raise AssertionError(f"no {needle!r} within {timeout}s; got {lines}") from None


@pytest.mark.slow
async def test_cli_scripted_chat_reaches_the_follower(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    alice, bob = unique("alice"), unique("bob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, out, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
        assert f"signed up @{handle}" in out
    assert stat.S_IMODE((home / "a.json").stat().st_mode) == 0o600

    code, out, err = await run_cli(home, "whoami", "--profile", "b")
    assert code == 0, err
    assert out.startswith(f"@{bob} ")

    follower = await start_cli(home, "follow", "--profile", "b")
    try:
        assert follower.stdout is not None
        await read_until(follower.stdout, "synced", timeout=30)

        code, out, err = await run_cli(
            home,
            "chat",
            f"@{bob}",
            "--profile",
            "a",
            "--linger",
            "1",
            stdin=b"hello from the cli\n\nsecond line\n",
        )
        assert code == 0, err
        assert f"@{alice}: hello from the cli" in out
        assert f"@{alice}: second line" in out

        lines = await read_until(follower.stdout, "second line", timeout=30)
        assert any(f"@{alice}: hello from the cli" in line for line in lines)
        assert all(line.startswith(("message ", "receipt ", "conversation ")) for line in lines)
    finally:
        with contextlib.suppress(ProcessLookupError):
            follower.send_signal(signal.SIGINT)
        _, follow_err = await asyncio.wait_for(follower.communicate(), 30)
    assert follower.returncode == 0, follow_err.decode()

    code, out, err = await run_cli(home, "history", f"@{alice}", "--profile", "b", "--limit", "5")
    assert code == 0, err
    history = out.splitlines()
    assert len(history) == 2
    assert history[0].startswith("#1 ") and history[0].endswith(f"@{alice}: hello from the cli")
    assert history[1].startswith("#2 ") and history[1].endswith(f"@{alice}: second line")

    code, out, err = await run_cli(home, "inbox", "--profile", "a")
    assert code == 0, err
    assert f"@{bob} " in out

    code, out, err = await run_cli(home, "send", f"@{alice}", "hi", "back", "--profile", "b")
    assert code == 0, err
    assert out.startswith(f"sent #3 to @{alice}")

    code, _, err = await run_cli(home, "whoami", "--profile", "missing")
    assert code == 2
    assert "no profile 'missing'" in err


@pytest.mark.slow
async def test_cli_exports_history_and_downloads_it(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    alice, bob = unique("alice"), unique("bob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
    code, _, err = await run_cli(
        home, "chat", f"@{bob}", "--profile", "a", "--linger", "1", stdin=b"for the record\n"
    )
    assert code == 0, err

    code, out, err = await run_cli(home, "export", "start", f"@{bob}", "--profile", "a")
    assert code == 0, err
    export_id, state = out.split()[:2]
    assert state == "queued"
    out_file = tmp_path / "history.jsonl"
    code, _, err = await run_cli(
        home, "export", "download", export_id, "--wait", "60", "--out", str(out_file),
        "--profile", "a",
    )  # fmt: skip
    assert code == 0, err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert {r["format"] for r in records} == {"parley.history_export.v1"}
    assert len([r for r in records if not r["system"]]) == 1
    code, out, err = await run_cli(home, "export", "list", "--profile", "a")
    assert code == 0, err
    assert out.startswith(f"{export_id} ready ") and "100%" in out
    # Bob sees none of it.
    code, out, err = await run_cli(home, "export", "list", "--profile", "b")
    assert (code, out.strip()) == (0, "(no exports)"), err
    code, _, err = await run_cli(home, "export", "status", export_id, "--profile", "b")
    assert code != 0 and "EXPORT_NOT_FOUND" in err
