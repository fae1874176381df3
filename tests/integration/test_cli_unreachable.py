"""The chat CLI when its server is down: one line naming the address, a non-zero
exit, and no profile left half-written."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from parley_cli.profiles import Profile, ProfileStore
from parley_dev.process import free_ports
from parley_sdk import Credentials
from tests.integration.test_sdk_cli import run_cli

pytestmark = pytest.mark.slow

# The SDK retries UNAVAILABLE for about 8 s before giving up.
TIMEOUT = 60.0


def nobody_listens() -> list[str]:
    return [f"127.0.0.1:{port}" for port in free_ports(3)]


def target_options(keys: str, message: str, presence: str) -> list[str]:
    return ["--keys-target", keys, "--message-target", message, "--presence-target", presence]


def assert_says_unreachable(code: int, out: str, err: str, address: str) -> None:
    assert code == 1, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert f"cannot reach svc_keys at {address}" in lines[0]
    assert "./parley up" in lines[0]
    assert "UNAVAILABLE" not in err and "Traceback" not in err


async def test_signup_leaves_no_profile_when_the_server_is_down(tmp_path: Path) -> None:
    keys, message, presence = nobody_listens()
    home = tmp_path / "home"
    code, out, err = await run_cli(
        home,
        "signup",
        "alice",
        "--profile",
        "alice",
        *target_options(keys, message, presence),
        timeout=TIMEOUT,
    )
    assert_says_unreachable(code, out, err, keys)
    assert f"svc_message at {message}" in err and f"svc_presence at {presence}" in err
    assert not home.exists() or list(home.iterdir()) == []


async def test_a_failed_forced_signup_keeps_the_previous_profile(tmp_path: Path) -> None:
    keys, message, presence = nobody_listens()
    home = tmp_path / "home"
    store = ProfileStore(home)
    saved = _profile("alice", keys, message, presence)
    store.save(saved)
    device_store = store.new_device_store("alice")
    device_store.write_bytes(b"the previous device's keys")
    before = {path.name: path.read_bytes() for path in home.iterdir()}

    code, out, err = await run_cli(
        home,
        "signup",
        "alice2",
        "--profile",
        "alice",
        "--force",
        *target_options(keys, message, presence),
        timeout=TIMEOUT,
    )
    assert_says_unreachable(code, out, err, keys)
    assert {path.name: path.read_bytes() for path in home.iterdir()} == before
    assert store.load("alice") == saved


async def test_every_command_names_the_profiles_address_when_it_is_down(tmp_path: Path) -> None:
    keys, message, presence = nobody_listens()
    home = tmp_path / "home"
    ProfileStore(home).save(_profile("alice", keys, message, presence))
    commands = [
        ["whoami"],
        ["send", "@bob", "hello"],
        ["history", "@bob"],
        ["inbox"],
        ["follow", "--exit-after", "30"],
        ["group", "members", "@bob"],
        ["presence", "get", "@bob"],
        ["contacts", "list"],
    ]
    results = await asyncio.gather(
        *(run_cli(home, *command, "--profile", "alice", timeout=TIMEOUT) for command in commands)
    )
    for command, (code, out, err) in zip(commands, results, strict=True):
        assert code == 1, (command, out, err)
        assert_says_unreachable(code, out, err, keys)
    names = {path.name for path in home.iterdir()}
    assert {"alice.json", "alice.db"} <= names
    assert not [name for name in names if ".signup." in name]


def _profile(name: str, keys: str, message: str, presence: str) -> Profile:
    soon = datetime.now(UTC) + timedelta(hours=1)
    return Profile(
        name=name,
        handle=name,
        keys_target=keys,
        message_target=message,
        presence_target=presence,
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=soon,
            refresh_token="rt",
            refresh_token_expire_time=soon + timedelta(days=30),
            account_id="0190f2a4-1111-7000-8000-000000000001",
            device_id="0190f2a4-2222-7000-8000-000000000002",
        ),
    )
