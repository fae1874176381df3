"""The SDK's device store (settings, plaintext history, persistence) and the
Content helpers, without servers."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee import (
    PADDING_BLOCK,
    DecryptionError,
    DeviceAddress,
    DeviceStore,
    parse_content,
    sender_key_content,
    text_content,
)

SENDER = DeviceAddress("acct-a", "dev-1")


def test_settings_and_history_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    store = DeviceStore.open(path)
    assert store.get_setting("credentials") is None
    store.set_setting("credentials", '{"a": 1}')
    store.set_setting("credentials", '{"a": 2}')
    content = text_content("remember me")
    store.remember_plaintext(
        message_id="m-1", conversation_id="c-1", sender=SENDER, content=content, sent_at=3.0
    )
    assert store.recall_plaintext("m-2") is None
    store.close()

    reopened = DeviceStore.open(str(path))
    assert reopened.get_setting("credentials") == '{"a": 2}'
    assert reopened.recall_plaintext("m-1") == content
    mode = reopened._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert path.stat().st_mode & 0o777 == 0o600  # it holds private keys
    reopened.close()


def test_a_failed_transaction_leaves_nothing_behind() -> None:
    store = DeviceStore.open(":memory:")

    def write_then_fail() -> None:
        with store.transaction():
            store.set_setting("k", "v")
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        write_then_fail()
    assert store.get_setting("k") is None


def test_a_store_from_a_newer_sdk_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "device.db"
    DeviceStore.open(path).close()
    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA user_version=99")
    with pytest.raises(ValueError, match="newer"):
        DeviceStore.open(path)


@pytest.mark.parametrize("text", ["", "hi", "x" * 45, "x" * 60, "é" * 200, "y" * 5000])
def test_text_content_is_padded_to_whole_blocks(text: str) -> None:
    content = text_content(text)
    assert len(content) % PADDING_BLOCK == 0
    parsed = parse_content(content)
    assert parsed.text.text == text


def test_padding_hides_small_length_differences() -> None:
    assert len(text_content("a")) == len(text_content("a much longer message"))


def test_sender_key_content_round_trips() -> None:
    distribution = e2ee_pb2.SenderKeyDistribution(
        conversation_id="g", epoch=2, iteration=7, chain_key=bytes(32), signing_key=bytes(32)
    )
    content = sender_key_content(distribution.SerializeToString())
    assert len(content) % PADDING_BLOCK == 0
    assert parse_content(content).sender_key == distribution


def test_parse_content_refuses_garbage_and_unknown_kinds() -> None:
    with pytest.raises(DecryptionError):
        parse_content(b"\xff\xff\xff")
    with pytest.raises(DecryptionError):
        parse_content(e2ee_pb2.Content(padding=b"\x00" * 10).SerializeToString())
