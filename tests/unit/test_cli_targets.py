"""Which addresses a CLI command uses, naming those that do not answer, and
sign-up's pending encryption store."""

from __future__ import annotations

import argparse
import socket
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from parley_cli.profiles import Profile, ProfileStore
from parley_cli.targets import Targets, unreachable_message
from parley_dev.process import free_port
from parley_sdk import DEFAULT_KEYS_TARGET, DEFAULT_MESSAGE_TARGET, Credentials


@pytest.fixture
def listening() -> Iterator[str]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        yield f"127.0.0.1:{server.getsockname()[1]}"


def options(**targets: str | None) -> argparse.Namespace:
    return argparse.Namespace(
        profile="p",
        keys_target=targets.get("keys"),
        message_target=targets.get("message"),
        presence_target=targets.get("presence"),
    )


def profile(keys: str, message: str, presence: str) -> Profile:
    now = datetime.now(UTC)
    return Profile(
        name="p",
        handle="p",
        keys_target=keys,
        message_target=message,
        presence_target=presence,
        credentials=Credentials(
            access_token="at",
            access_token_expire_time=now,
            refresh_token="rt",
            refresh_token_expire_time=now,
        ),
    )


def test_the_command_line_wins_over_the_profile_over_the_defaults(tmp_path: Path) -> None:
    assert Targets.of(options()).keys == DEFAULT_KEYS_TARGET
    saved = profile("k:1", "m:2", "p:3")
    chosen = Targets.of(options(message="M:9"), saved)
    assert chosen == Targets(keys="k:1", message="M:9", presence="p:3")

    store = ProfileStore(tmp_path)
    store.save(saved)
    assert Targets.used_by(options(), store).keys == "k:1"
    # signup replaces the profile: the addresses it used are the command line's.
    signing_up = options()
    signing_up.makes_profile = True
    assert Targets.used_by(signing_up, store).message == DEFAULT_MESSAGE_TARGET


def test_only_the_addresses_nobody_listens_on_are_named(listening: str) -> None:
    down = f"127.0.0.1:{free_port()}"
    message = unreachable_message(Targets(keys=down, message=listening, presence=listening))
    assert message.startswith(f"error: cannot reach svc_keys at {down};")
    assert listening not in message
    assert "./parley up" in message
    assert "\n" not in message


def test_all_listening_still_names_every_address(listening: str) -> None:
    message = unreachable_message(Targets(keys=listening, message=listening, presence=listening))
    assert "did not answer" in message
    assert message.count(listening) == 3


def test_a_pending_store_replaces_the_profiles_only_when_adopted(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path)
    current = store.new_device_store("p")
    current.write_bytes(b"old device")
    pending = store.pending_device_store("p")
    pending.write_bytes(b"new device")
    pending.with_name(pending.name + "-wal").write_bytes(b"log")
    assert current.read_bytes() == b"old device"

    assert store.adopt_device_store("p", pending) == current
    assert current.read_bytes() == b"new device"
    assert current.with_name(current.name + "-wal").read_bytes() == b"log"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.db", "p.db-wal"]
    assert (current.stat().st_mode & 0o777) == 0o600
