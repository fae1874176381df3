"""The `parley` CLI encrypts end to end: each profile keeps its device's keys in an
owner-only store beside its JSON file, `send`/`chat` encrypt, `follow`/`history`
decrypt, the server holds no plaintext, and a profile from before encryption
gets keys on its next command."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import stat
from pathlib import Path

import pytest

from parley_cli.profiles import Profile, ProfileStore
from parley_dev.stack import LocalStack
from parley_sdk import Client, Credentials, Direction
from tests.integration.test_sdk_cli import read_until, run_cli, start_cli
from tests.sdk_e2ee_inbox import unique


@pytest.mark.slow
async def test_cli_messages_are_encrypted_and_read_back(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    alice, bob = unique("calice"), unique("cbob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
        store = home / f"{profile}.db"
        assert stat.S_IMODE(store.stat().st_mode) == 0o600

    follower = await start_cli(home, "follow", "--profile", "b")
    try:
        assert follower.stdout is not None
        await read_until(follower.stdout, "synced", timeout=30)
        code, out, err = await run_cli(
            home, "chat", f"@{bob}", "--profile", "a", "--linger", "1", stdin=b"psst, bob\n"
        )
        assert code == 0, err
        assert f"@{alice}: psst, bob" in out
        lines = await read_until(follower.stdout, "psst, bob", timeout=30)
        assert not [line for line in lines if "cannot decrypt" in line]
    finally:
        with contextlib.suppress(ProcessLookupError):
            follower.send_signal(signal.SIGINT)
        _, follow_err = await asyncio.wait_for(follower.communicate(), 30)
    assert follower.returncode == 0, follow_err.decode()

    code, out, err = await run_cli(home, "send", f"@{alice}", "hello", "alice", "--profile", "b")
    assert code == 0, err
    # Both sides read the whole conversation: Alice decrypts Bob's reply, and
    # each reads its own messages from its store.
    for profile, peer in (("a", bob), ("b", alice)):
        code, out, err = await run_cli(home, "history", f"@{peer}", "--profile", profile)
        assert code == 0, err
        history = out.splitlines()
        assert history[0].endswith(f"@{alice}: psst, bob"), history
        assert history[1].endswith(f"@{bob}: hello alice"), history

    # On the server, only ciphertext.
    profile = json.loads((home / "a.json").read_text())
    credentials = Credentials.from_dict(profile["credentials"])
    async with await Client.connect(
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
        credentials=credentials,
    ) as plain:
        peer = await plain.get_account(handle=bob)
        cid = (await plain.create_direct_conversation(peer.account_id)).conversation.conversation_id
        bodies = [m.body async for m in plain.list_messages(cid, direction=Direction.FORWARD)]
    assert len(bodies) == 2
    assert not [b for b in bodies if b"psst" in b or b"hello alice" in b]


@pytest.mark.slow
async def test_a_profile_from_before_encryption_gets_keys(
    stack: LocalStack, tmp_path: Path
) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    old, peer = unique("old"), unique("peer")
    code, _, err = await run_cli(home, "signup", peer, "--profile", "peer", *targets)
    assert code == 0, err
    # `old` signed up with a CLI that had no encryption: a profile, no store, no keys.
    async with await Client.sign_up(
        handle=old,
        device_name="old-cli",
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
    ) as client:
        assert client.credentials is not None
        ProfileStore(home).save(
            Profile(
                name="old",
                handle=old,
                keys_target=stack.keys_target,
                message_target=stack.message_targets[0],
                credentials=client.credentials,
            )
        )
    code, _, err = await run_cli(home, "send", f"@{old}", "can you read this", "--profile", "peer")
    assert code == 1
    assert "no device of the other member has published encryption keys" in err

    code, out, err = await run_cli(home, "whoami", "--profile", "old")
    assert code == 0, err
    assert (home / "old.db").exists()
    code, _, err = await run_cli(home, "send", f"@{old}", "now you can", "--profile", "peer")
    assert code == 0, err
    code, out, err = await run_cli(home, "history", f"@{peer}", "--profile", "old")
    assert code == 0, err
    assert out.splitlines()[-1].endswith(f"@{peer}: now you can")

    # A store that belongs to another device is refused, not mixed up.
    (home / "old.db").unlink()
    (home / "peer.db").rename(home / "old.db")
    code, _, err = await run_cli(home, "whoami", "--profile", "old")
    assert code == 2
    assert "belongs to device" in err
