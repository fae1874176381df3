"""The SDK's file methods over an in-memory media service and object store
(tests/sdk_media_fakes.py): send, download, forward, resume after a crash,
expired sessions and URLs, dropped downloads, damage, and the pointer that
travels inside the encrypted message."""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path
from typing import Any

import grpc
import pytest
from PIL import ExifTags, Image

from parley.e2ee.v1 import e2ee_pb2
from parley.message.v1 import messages_pb2 as pb
from parley_sdk import (
    Attachment,
    ErrorReason,
    FileDecryptionError,
    MediaArchivedError,
    MediaTransferError,
    MessageType,
    RestoreState,
    SentFile,
)
from parley_sdk._uploads import PART_SIZE
from parley_sdk.e2ee.files import ciphertext_size
from tests.sdk_media_fakes import MediaDevice, World, fresh_id, new_world, refuse
from tests.unit.test_sdk_images import photo

DIRECT = pb.CONVERSATION_TYPE_DIRECT
CHANNEL = pb.CONVERSATION_TYPE_CHANNEL
MiB = 1024 * 1024


class Crash(Exception):
    """Stands in for the process dying in the middle of an upload."""


async def pair(world: World, store: object = ":memory:") -> tuple[MediaDevice, MediaDevice, str]:
    alice = await world.device("alice", "a1", store)
    bob = await world.device("bob", "b1")
    return alice, bob, world.server.conversation(DIRECT, ["alice", "bob"])


async def test_a_small_file_round_trip_stores_ciphertext_only() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    data = b"quarterly numbers " * 500
    sent = await alice.send_file(chat, data, file_name="q3.txt", caption="as promised")
    pointer = sent.attachment
    assert (pointer.file_name, pointer.content_type, pointer.caption) == (
        "q3.txt",
        "text/plain",
        "as promised",
    )
    assert pointer.plaintext_size == len(data)
    assert pointer.size == ciphertext_size(len(data))
    assert sent.uploaded_bytes == pointer.size
    stored = world.server.messages[chat][-1]
    assert list(stored.media_ids) == [pointer.media_id]
    assert stored.type == pb.MESSAGE_TYPE_DOCUMENT
    # The server holds ciphertext; the key is only inside the encrypted body.
    ciphertext = world.objects.objects[pointer.media_id]
    assert hashlib.sha256(ciphertext).digest() == pointer.digest
    assert b"quarterly" not in ciphertext and pointer.key not in stored.body
    assert pointer.key.hex() not in repr(pointer)

    received = await bob.received(chat, world.server)
    assert received.attachment is not None and received.text == "as promised"
    assert received.attachment.key == pointer.key
    assert await bob.download(received) == data
    assert await bob.download(stored) == data  # a stored message is decrypted first
    assert await alice.download(sent) == data  # the sender reads its own from its store


async def test_a_photo_goes_without_its_exif_and_with_a_thumbnail() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    sent = await alice.send_file(chat, photo((800, 600), orientation=6), file_name="IMG_1.JPG")
    pointer = sent.attachment
    assert pointer.is_image and (pointer.width, pointer.height) == (600, 800)
    assert pointer.blurhash and pointer.thumbnail is not None
    assert pointer.thumbnail.size <= 64 * 1024
    stored = world.server.messages[chat][-1]
    assert list(stored.media_ids) == [pointer.media_id, pointer.thumbnail.media_id]
    assert stored.type == pb.MESSAGE_TYPE_IMAGE

    received = await bob.received(chat, world.server)
    image = Image.open(io.BytesIO(await bob.download(received)))
    assert image.size == (600, 800)
    assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}
    thumbnail = Image.open(io.BytesIO(await bob.download(received, thumbnail=True)))
    assert thumbnail.format == "JPEG"
    assert thumbnail.size == (pointer.thumbnail.width, pointer.thumbnail.height)


async def test_multipart_upload_and_download_to_a_directory(tmp_path: Path) -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    source = tmp_path / "talk.mp4"
    source.write_bytes(os.urandom(2 * PART_SIZE + 12345))
    seen: list[tuple[int, int]] = []
    sent = await alice.send_file(
        chat, source, progress=lambda done, total: seen.append((done, total))
    )
    assert sent.attachment.content_type == "video/mp4"
    assert world.server.messages[chat][-1].type == pb.MESSAGE_TYPE_VIDEO
    session = next(iter(world.media.sessions.values()))
    assert session.part_size == PART_SIZE and len(session.part_sha256s) == 3
    assert seen[-1] == (sent.attachment.size, sent.attachment.size)
    assert [done for done, _ in seen] == sorted(done for done, _ in seen)

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    written = await bob.download(await bob.received(chat, world.server), dest=downloads)
    assert written == downloads / "talk.mp4"
    assert written.read_bytes() == source.read_bytes()
    assert [p.name for p in downloads.iterdir()] == ["talk.mp4"], "no temporary file is left"
    assert alice.pending_uploads() == []


async def test_a_send_killed_half_way_resumes_without_resending_stored_parts() -> None:
    world = new_world()
    alice, _, chat = await pair(world)
    data = os.urandom(3 * PART_SIZE + 1000)
    request_id = fresh_id()

    def die_after_one_part(done: int, total: int) -> None:
        if done >= PART_SIZE:
            raise Crash

    with pytest.raises(Crash):
        await alice.send_file(chat, data, request_id=request_id, progress=die_after_one_part)
    assert world.server.messages[chat] == [], "nothing is sent before the file is stored"
    (pending,) = alice.pending_uploads()
    assert (pending.request_id, pending.path) == (request_id, None)
    assert pending.stored_bytes >= PART_SIZE
    stored_before = world.objects.put_bytes

    resumed = await alice.send_file(chat, data, request_id=request_id)
    total = ciphertext_size(len(data))
    assert resumed.uploaded_bytes == total - stored_before
    assert world.objects.put_bytes == total, "each part went up exactly once"
    assert world.media.calls.count("CreateUpload") == 1
    assert alice.pending_uploads() == []
    assert [m.message_id for m in world.server.messages[chat]] == [resumed.message_id]


async def test_resume_uploads_finishes_sends_of_paths(tmp_path: Path) -> None:
    world = new_world()
    store = tmp_path / "alice.db"
    alice, bob, chat = await pair(world, store)
    source = tmp_path / "backup.tar"
    source.write_bytes(os.urandom(2 * PART_SIZE + 5))

    def die(done: int, total: int) -> None:
        if done >= PART_SIZE:
            raise Crash

    with pytest.raises(Crash):
        await alice.send_file(chat, source, caption="the backup", progress=die)
    alice._require_e2ee().close()
    # A new process: the same store, nothing else.
    again = await world.device("alice", "a1", store)
    (sent,) = await again.resume_uploads()
    assert sent.attachment.caption == "the backup"
    assert sent.uploaded_bytes < sent.attachment.size, "stored parts were not sent again"
    assert await bob.download(await bob.received(chat, world.server)) == source.read_bytes()
    assert again.pending_uploads() == []


async def test_a_changed_file_is_not_resumed_into_the_old_session(tmp_path: Path) -> None:
    world = new_world()
    alice, _, chat = await pair(world)
    source = tmp_path / "draft.bin"
    source.write_bytes(os.urandom(2 * PART_SIZE))

    def die(done: int, total: int) -> None:
        raise Crash

    with pytest.raises(Crash):
        await alice.send_file(chat, source, progress=die)
    source.write_bytes(os.urandom(2 * PART_SIZE + 1))
    assert await alice.resume_uploads() == []
    assert alice.pending_uploads() == []
    assert "AbortUpload" in world.media.calls


async def test_an_expired_session_starts_over_with_the_same_file() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    data = os.urandom(2 * PART_SIZE + 1)
    request_id = fresh_id()

    def die(done: int, total: int) -> None:
        raise Crash

    with pytest.raises(Crash):
        await alice.send_file(chat, data, request_id=request_id, progress=die)
    (upload_id,) = list(world.media.sessions)
    world.media.expire(upload_id)
    sent = await alice.send_file(chat, data, request_id=request_id)
    assert sent.uploaded_bytes == sent.attachment.size
    assert await bob.download(sent.attachment) == data


async def test_another_deployment_threshold_is_followed() -> None:
    world = new_world(threshold=6 * MiB)
    alice, bob, chat = await pair(world)
    data = os.urandom(7 * MiB)  # single PUT by the default threshold, parts here
    sent = await alice.send_file(chat, data, content_type="application/zip")
    assert world.media.calls.count("CreateUpload") == 2
    assert await bob.download(sent.attachment) == data


async def test_forwarding_uploads_nothing_and_keeps_the_pointer() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    carol = await world.device("carol", "c1")
    with_carol = world.server.conversation(DIRECT, ["bob", "carol"])
    sent = await alice.send_file(chat, photo(), file_name="crag.jpg", caption="look")
    puts = world.objects.put_bytes
    received = await bob.received(chat, world.server)
    forwarded: list[SentFile] = []
    for _ in range(3):
        forwarded.append(await bob.forward(received, with_carol))
    assert world.objects.put_bytes == puts
    assert all(f.uploaded_bytes == 0 for f in forwarded)
    stored = world.server.messages[with_carol][-1]
    assert stored.forwarded and list(stored.media_ids) == list(sent.attachment.media_ids)
    seen = await carol.received(with_carol, world.server)
    assert seen.attachment == sent.attachment
    assert await carol.download(seen) == await alice.download(sent)
    renamed = await bob.forward(sent.attachment, with_carol, caption="")
    assert (
        renamed.attachment.caption == "" and renamed.attachment.media_id == sent.attachment.media_id
    )


async def test_a_dropped_download_resumes_with_a_range_request() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    data = os.urandom(3 * 64 * 1024 + 99)
    sent = await alice.send_file(chat, data, content_type="application/octet-stream")
    world.objects.cut_get_after = [70_000, 1_000]
    assert await bob.download(sent.attachment) == data
    ranges = [r for _, r in world.objects.gets]
    assert ranges == [None, "bytes=70000-", "bytes=71000-"]


async def test_an_expired_download_url_is_renewed() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    sent = await alice.send_file(chat, b"tiny", content_type="text/plain")
    world.objects.expire_next_get = True
    assert await bob.download(sent.attachment) == b"tiny"
    assert world.media.calls.count("GetDownload") == 2


async def test_damage_stops_the_download_and_leaves_no_file(tmp_path: Path) -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    sent = await alice.send_file(chat, os.urandom(600_000), file_name="blob.bin")
    world.objects.corrupt[sent.attachment.media_id] = 9 + 2 * (64 * 1024 + 16) + 5
    with pytest.raises(FileDecryptionError) as failure:
        await bob.download(sent.attachment, dest=tmp_path)
    assert failure.value.chunk == 2
    assert list(tmp_path.iterdir()) == []
    wrong_key = Attachment(**{**_fields(sent.attachment), "key": os.urandom(32)})
    world.objects.corrupt.clear()
    with pytest.raises(FileDecryptionError) as failure:
        await bob.download(wrong_key)
    assert failure.value.chunk == 0


def _fields(attachment: Attachment) -> dict[str, object]:
    return {name: getattr(attachment, name) for name in Attachment.__slots__}


async def test_upload_failures_are_retried_or_surface() -> None:
    world = new_world()
    alice, _, chat = await pair(world)
    world.objects.fail_puts = [503, 500]
    assert (await alice.send_file(chat, b"x" * 100, content_type="text/plain")).uploaded_bytes
    world.objects.fail_puts = [400]
    with pytest.raises(MediaTransferError) as failure:
        await alice.send_file(chat, b"y" * 100, content_type="text/plain")
    assert failure.value.status == 400


async def test_archived_media_and_restores() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    sent = await alice.send_file(chat, b"old stuff", content_type="text/plain")
    world.media.archived.add(sent.attachment.media_id)
    with pytest.raises(MediaArchivedError):
        await bob.download(sent.attachment)
    restore = await bob.restore_media(sent.attachment, days=2)
    assert (restore.media_id, restore.state) == (sent.attachment.media_id, RestoreState.QUEUED)
    assert (await bob.get_restore(sent.attachment.media_id)).state is RestoreState.READY


async def test_channels_carry_the_pointer_in_public_content() -> None:
    world = new_world()
    alice = await world.device("alice", "a1")
    news = world.server.conversation(CHANNEL, ["alice"])
    sent = await alice.send_file(news, b"bulletin", content_type="text/plain")
    envelope = e2ee_pb2.Envelope.FromString(world.server.messages[news][-1].body)
    assert envelope.WhichOneof("content") == "public"
    assert envelope.public.attachment.media_id == sent.attachment.media_id


async def test_a_message_without_a_file_cannot_be_downloaded() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    await alice._require_e2ee().send_text(
        chat, "just text", reply_to_message_id="", forwarded=False
    )
    received = await bob.received(chat, world.server)
    assert received.text == "just text" and received.attachment is None
    with pytest.raises(ValueError, match="carries no file"):
        await bob.download(received)
    assert MessageType(received.message.type) is MessageType.TEXT


async def test_a_completion_whose_answer_was_lost_is_found_again() -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    data = os.urandom(2 * PART_SIZE + 7)
    world.media.lose_completions = 1
    sent = await alice.send_file(chat, data)
    assert sent.uploaded_bytes == sent.attachment.size, "nothing went up twice"
    assert world.media.calls.count("CompleteUpload") == 1
    assert world.media.calls.count("CreateUpload") == 2  # the second answers already_stored
    assert await bob.download(sent.attachment) == data


async def test_media_collected_before_the_send_is_uploaded_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = new_world()
    alice, bob, chat = await pair(world)
    messages: Any = alice._require_e2ee()._client
    send = messages.send_message
    refused: list[str] = []

    async def collected_once(*args: Any, **kwargs: Any) -> pb.Message:
        if not refused:
            refused.append(kwargs["request_id"])
            world.media.media.clear()  # the collector got there first
            raise refuse(grpc.StatusCode.NOT_FOUND, ErrorReason.MEDIA_NOT_FOUND)
        return await send(*args, **kwargs)

    monkeypatch.setattr(messages, "send_message", collected_once)
    sent = await alice.send_file(chat, b"x" * 1000, content_type="text/plain")
    assert sent.uploaded_bytes == 2 * sent.attachment.size
    assert len(refused) == 1 and len(world.server.messages[chat]) == 1
    assert await bob.download(sent.attachment) == b"x" * 1000
