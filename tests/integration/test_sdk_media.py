"""Files through the SDK and the CLI against the real stack (svc_media on
SeaweedFS, svc_message): send and download small and multipart files, photos
without their metadata, forwards that upload nothing, an upload SIGKILLed
half-way and resumed, and who may download."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import signal
import sys
import uuid
from pathlib import Path

import pytest
from PIL import ExifTags, Image

from parley_dev.stack import LocalStack
from parley_sdk import Client, DecryptedMessage, MediaAccessDeniedError
from parley_sdk._uploads import PART_SIZE
from tests.integration.test_sdk_cli import run_cli
from tests.sdk_e2ee_inbox import unique
from tests.unit.test_sdk_images import photo

ROOT = Path(__file__).resolve().parents[2]
MiB = 1024 * 1024
KILL_WAIT = 120.0


async def user(stack: LocalStack, store: Path, prefix: str) -> Client:
    return await Client.connect(
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
        presence_target=stack.presence_target,
        media_target=stack.media_target,
        store=store,
        handle=unique(prefix),
        device_name=f"{prefix}-1",
    )


async def reopen(stack: LocalStack, store: Path) -> Client:
    return await Client.connect(
        keys_target=stack.keys_target,
        message_target=stack.message_targets[0],
        presence_target=stack.presence_target,
        media_target=stack.media_target,
        store=store,
    )


async def direct(one: Client, other: Client) -> str:
    view = await one.create_direct_conversation(other.account_id)
    return view.conversation.conversation_id


async def newest(client: Client, conversation_id: str) -> DecryptedMessage:
    async for entry in client.read_history(conversation_id, page_size=1):
        return entry
    raise AssertionError("the conversation is empty")


async def test_a_small_file_and_a_photo_round_trip(stack: LocalStack, tmp_path: Path) -> None:
    alice = await user(stack, tmp_path / "alice.db", "malice")
    bob = await user(stack, tmp_path / "bob.db", "mbob")
    async with alice, bob:
        chat = await direct(alice, bob)
        notes = os.urandom(200_000)
        sent = await alice.send_file(chat, notes, file_name="notes.bin", caption="raw data")
        assert sent.uploaded_bytes == sent.attachment.size
        assert list(sent.message.media_ids) == [sent.attachment.media_id]
        received = await newest(bob, chat)
        assert received.attachment == sent.attachment
        assert received.text == "raw data"
        assert await bob.download(received) == notes

        picture = await alice.send_file(chat, photo((1200, 800), orientation=6), file_name="a.jpg")
        pointer = picture.attachment
        assert pointer.thumbnail is not None and pointer.blurhash
        assert list(picture.message.media_ids) == [pointer.media_id, pointer.thumbnail.media_id]
        shown = await newest(bob, chat)
        image = Image.open(io.BytesIO(await bob.download(shown)))
        assert image.size == (800, 1200)
        assert image.getexif().get_ifd(ExifTags.IFD.GPSInfo) == {}
        preview = await bob.download(shown, thumbnail=True)
        assert Image.open(io.BytesIO(preview)).format == "JPEG"


@pytest.mark.slow
async def test_a_multipart_file_round_trip(stack: LocalStack, tmp_path: Path) -> None:
    alice = await user(stack, tmp_path / "alice.db", "malice")
    bob = await user(stack, tmp_path / "bob.db", "mbob")
    source = tmp_path / "recording.mp4"
    source.write_bytes(os.urandom(2 * PART_SIZE + 3 * MiB))  # > 8 MiB: multipart
    async with alice, bob:
        chat = await direct(alice, bob)
        sent = await alice.send_file(chat, source)
        assert sent.attachment.size > 8 * MiB
        assert sent.uploaded_bytes == sent.attachment.size
        out = tmp_path / "downloads"
        out.mkdir()
        received = await newest(bob, chat)
        written = await bob.download(received, dest=out)
        assert written == out / "recording.mp4"
        assert written.read_bytes() == source.read_bytes()


async def test_forwarding_three_times_uploads_zero_bytes(stack: LocalStack, tmp_path: Path) -> None:
    alice = await user(stack, tmp_path / "alice.db", "malice")
    bob = await user(stack, tmp_path / "bob.db", "mbob")
    carol = await user(stack, tmp_path / "carol.db", "mcarol")
    async with alice, bob, carol:
        chat = await direct(alice, bob)
        data = os.urandom(300_000)
        sent = await alice.send_file(chat, data, file_name="song.ogg")
        received = await newest(bob, chat)
        before = await bob.get_media_quota()
        with_carol = await direct(bob, carol)
        forwards = [await bob.forward(received, with_carol) for _ in range(3)]
        assert [f.uploaded_bytes for f in forwards] == [0, 0, 0]
        assert all(f.attachment.media_id == sent.attachment.media_id for f in forwards)
        after = await bob.get_media_quota()
        assert (after.uploaded_today_bytes, after.stored_bytes) == (
            before.uploaded_today_bytes,
            before.stored_bytes,
        ), "forwards count against no quota of the forwarder"
        seen = await newest(carol, with_carol)
        assert seen.message.forwarded
        assert await carol.download(seen) == data


async def test_outsiders_may_not_download(stack: LocalStack, tmp_path: Path) -> None:
    alice = await user(stack, tmp_path / "alice.db", "malice")
    bob = await user(stack, tmp_path / "bob.db", "mbob")
    mallory = await user(stack, tmp_path / "mallory.db", "mmallory")
    async with alice, bob, mallory:
        sent = await alice.send_file(await direct(alice, bob), b"for bob only", file_name="x.txt")
        with pytest.raises(MediaAccessDeniedError):
            await mallory.download(sent.attachment)  # even holding the pointer and key


@pytest.mark.slow
async def test_an_upload_sigkilled_half_way_resumes_without_resending_parts(
    stack: LocalStack, tmp_path: Path
) -> None:
    store = tmp_path / "alice.db"
    alice = await user(stack, store, "malice")
    bob = await user(stack, tmp_path / "bob.db", "mbob")
    async with bob:
        async with alice:
            chat = await direct(alice, bob)
        source = tmp_path / "archive.tar"
        source.write_bytes(os.urandom(4 * PART_SIZE + 1234))
        request_id = str(uuid.uuid4())
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.sdk_media_child",
            str(store),
            stack.keys_target,
            stack.message_targets[0],
            stack.presence_target,
            stack.media_target,
            chat,
            str(source),
            request_id,
            str(2 * PART_SIZE),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            assert child.stdout is not None
            stored = 0
            async with asyncio.timeout(KILL_WAIT):
                while stored < 2 * PART_SIZE:
                    line = (await child.stdout.readline()).decode()
                    assert line.startswith("stored "), line
                    stored = int(line.split()[1])
            child.send_signal(signal.SIGKILL)
        finally:
            with contextlib.suppress(ProcessLookupError):
                child.kill()
            await asyncio.wait_for(child.wait(), 30)
        assert child.returncode == -signal.SIGKILL

        again = await reopen(stack, store)
        async with again:
            (pending,) = again.pending_uploads()
            assert pending.request_id == request_id and pending.path == str(source)
            (sent,) = await again.resume_uploads()
            total = sent.attachment.size
            assert sent.uploaded_bytes <= total - 2 * PART_SIZE, "stored parts went up again"
            assert sent.uploaded_bytes > 0
            assert again.pending_uploads() == []
        received = await newest(bob, chat)
        assert received.message.message_id == sent.message_id
        assert await bob.download(received) == source.read_bytes()


@pytest.mark.slow
async def test_cli_send_file_and_download(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = [
        "--keys-target",
        stack.keys_target,
        "--message-target",
        stack.message_targets[0],
        "--presence-target",
        stack.presence_target,
        "--media-target",
        stack.media_target,
    ]
    alice, bob = unique("falice"), unique("fbob")
    for profile, handle in (("a", alice), ("b", bob)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
    report = tmp_path / "report.pdf"
    report.write_bytes(b"%PDF-1.7 " + os.urandom(50_000))
    code, out, err = await run_cli(
        home, "send-file", f"@{bob}", str(report), "--caption", "Q3", "--profile", "a"
    )
    assert code == 0, err
    assert out.startswith("sent #1 ") and '"report.pdf" application/pdf' in out

    code, out, err = await run_cli(home, "history", f"@{alice}", "--profile", "b")
    assert code == 0, err
    assert out.strip().endswith(f'@{alice}: [file "report.pdf" application/pdf 50.0 KB] Q3')

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    code, out, err = await run_cli(
        home, "download", f"@{alice}", "#1", "--out", str(downloads), "--profile", "b"
    )
    assert code == 0, err
    assert (downloads / "report.pdf").read_bytes() == report.read_bytes()
    code, _, err = await run_cli(
        home, "download", f"@{alice}", "#1", "--out", str(downloads), "--profile", "b"
    )
    assert code == 2 and "exists" in err
