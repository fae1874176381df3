"""`parley send-file` and `parley download` without servers: parsing, finding the
message, where a download goes, how a file message reads, the media target."""

from __future__ import annotations

import argparse
import socket
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley_cli import build_parser
from parley_cli.common import UsageError
from parley_cli.files import SEARCH_LIMIT, find_message, target_path
from parley_cli.output import Directory, describe_file, format_message
from parley_cli.profiles import Profile
from parley_cli.targets import Targets, unreachable_message
from parley_dev.process import free_port
from parley_sdk import DEFAULT_MEDIA_TARGET, Attachment, Credentials, Thumbnail

CONVERSATION = "0190f2a4-1111-7000-8000-000000000001"
MESSAGE = "0190f2a4-2222-7000-8000-000000000002"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def pointer(**fields: Any) -> Attachment:
    values: dict[str, Any] = {
        "media_id": "m-0123456789abcdef0123456789",
        "key": b"k" * 32,
        "digest": b"d" * 32,
        "size": 2_100_045,
        "plaintext_size": 2_100_000,
        "content_type": "image/jpeg",
        "file_name": "crag.jpg",
        "width": 4032,
        "height": 3024,
        "thumbnail": Thumbnail("m-t", b"t" * 32, b"e" * 32, 9000),
    }
    values.update(fields)
    return Attachment(**values)


def test_file_commands_parse() -> None:
    args = parse("send-file", "@bob", "photo.jpg", "--caption", "the wall", "--media-target", "h:1")
    assert (args.conversation, args.path, args.caption) == ("@bob", Path("photo.jpg"), "the wall")
    assert (args.content_type, args.file_name, args.media_target) == (None, None, "h:1")
    args = parse("send-file", CONVERSATION, "x", "--type", "application/octet-stream", "--quiet")
    assert (args.content_type, args.quiet) == ("application/octet-stream", True)
    args = parse("download", "@bob", "#3", "--out", "-", "--thumbnail")
    assert (args.message, args.out, args.thumbnail, args.force) == ("#3", "-", True, False)
    with pytest.raises(SystemExit):
        parse("download", "@bob")


class History:
    """``list_messages`` over a fixed history, as the server pages it."""

    def __init__(self, count: int) -> None:
        self.messages = [pb.Message(seq=seq, message_id=f"id-{seq}") for seq in range(1, count + 1)]

    async def list_messages(self, conversation_id: str, **options: Any) -> Any:
        if options.get("start_seq"):
            for message in self.messages:
                if message.seq >= options["start_seq"]:
                    yield message
            return
        for message in reversed(self.messages):
            yield message


async def test_messages_are_found_by_seq_or_by_id_among_the_newest() -> None:
    client: Any = History(SEARCH_LIMIT + 10)
    assert (await find_message(client, "c", "#5")).message_id == "id-5"
    assert (await find_message(client, "c", "7")).message_id == "id-7"
    newest = f"id-{SEARCH_LIMIT + 10}"
    assert (await find_message(client, "c", newest)).seq == SEARCH_LIMIT + 10
    with pytest.raises(UsageError, match="#SEQ"):
        await find_message(client, "c", "id-1")
    with pytest.raises(UsageError, match="#99999"):
        await find_message(client, "c", "#99999")


def test_downloads_go_where_asked(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert target_path(pointer(), None, thumbnail=False) == tmp_path / "crag.jpg"
    assert target_path(pointer(), None, thumbnail=True) == tmp_path / "crag.thumbnail.jpg"
    assert target_path(pointer(), str(tmp_path), thumbnail=False) == tmp_path / "crag.jpg"
    assert target_path(pointer(), "x/y.jpg", thumbnail=False) == Path("x/y.jpg")
    sneaky = pointer(file_name="../../.bashrc")
    assert target_path(sneaky, None, thumbnail=False) == tmp_path / ".bashrc"
    nameless = pointer(file_name="")
    assert target_path(nameless, None, thumbnail=False).name == "m-0123456789abcdef012345"


async def test_a_file_message_reads_as_a_line() -> None:
    assert describe_file(pointer()) == '[file "crag.jpg" image/jpeg 2.1 MB 4032x3024]'
    document = pointer(file_name="", content_type="application/pdf", width=0, plaintext_size=999)
    assert describe_file(document) == "[file application/pdf 999 B]"
    client: Any = SimpleNamespace()
    directory = Directory(client)
    directory.remember("b", "bob")
    message = pb.Message(seq=3, sender_account_id="b", type=pb.MESSAGE_TYPE_IMAGE, body=b"x")
    line = await format_message(message, directory, text="the wall", attachment=pointer())
    assert line.endswith('@bob: [file "crag.jpg" image/jpeg 2.1 MB 4032x3024] the wall')
    no_caption = await format_message(message, directory, text="", attachment=pointer())
    assert no_caption.endswith("4032x3024]")


def test_profiles_and_targets_know_the_media_service() -> None:
    moment = datetime(2031, 1, 1, tzinfo=UTC)
    credentials = Credentials(
        access_token="a",
        access_token_expire_time=moment,
        refresh_token="r",
        refresh_token_expire_time=moment,
        account_id="acc",
        device_id="dev",
    )
    old = {
        "handle": "ann",
        "keys_target": "k:1",
        "message_target": "m:2",
        "credentials": credentials.to_dict(),
    }
    profile = Profile.from_dict("p", old)
    assert profile.media_target == DEFAULT_MEDIA_TARGET
    moved = Profile.from_dict("p", {**old, "media_target": "media:9"})
    assert Profile.from_dict("p", moved.to_dict()).media_target == "media:9"
    args = argparse.Namespace(
        keys_target=None, message_target=None, presence_target=None, media_target=None
    )
    assert Targets.of(args, moved).media == "media:9"
    args.media_target = "cli:1"
    assert Targets.of(args, moved).media == "cli:1"
    assert ("svc_media", "cli:1") in Targets.of(args, moved).named(media=True)
    assert "svc_media" not in dict(Targets.of(args, moved).named())
    assert parse("download", "@bob", "#1").uses_media
    assert not getattr(parse("send", "@bob", "hi"), "uses_media", False)
    # Parsers of other tools may not have the option at all.
    bare = argparse.Namespace(keys_target=None, message_target=None, presence_target=None)
    assert Targets.of(bare).media == DEFAULT_MEDIA_TARGET


def test_file_commands_name_the_media_service_when_it_is_down() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        up = f"127.0.0.1:{server.getsockname()[1]}"
        down = f"127.0.0.1:{free_port()}"
        targets = Targets(keys=up, message=up, presence=up, media=down)
        assert unreachable_message(targets, media=True).startswith(
            f"error: cannot reach svc_media at {down};"
        )
        assert "svc_media" not in unreachable_message(targets)
