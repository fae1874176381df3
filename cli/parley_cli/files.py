"""Files: ``parley send-file`` and ``parley download``.

Files are encrypted on this machine before they are uploaded, and their key
travels inside the (encrypted) message. A ``send-file`` that was interrupted
(Ctrl-C, a crash, the network) resumes when it is run again with the same
conversation and file: parts already stored are not sent again.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from parley_cli.common import Commands, UsageError, connect, resolve_conversation
from parley_cli.output import describe_file, emit, local_time, warn
from parley_cli.profiles import ProfileStore
from parley_sdk import Attachment, Client, Direction, Message, ProgressCallback

__all__ = ["find_message", "register_file_commands", "target_path"]

# A message named by id is looked for among this many of the newest ones; older
# ones are named by #SEQ (as `parley history` prints them).
SEARCH_LIMIT = 2000


def register_file_commands(commands: Commands) -> None:
    add = commands.add
    send = add(
        "send-file",
        _send_file,
        "send a file to @HANDLE or a conversation id, end-to-end encrypted (photos lose "
        "their metadata); run it again to resume an interrupted upload",
    )
    send.add_argument("conversation", metavar="@HANDLE|CONVERSATION")
    send.add_argument("path", metavar="PATH", type=Path)
    send.add_argument("--caption", default=None, metavar="TEXT", help="text shown with the file")
    send.add_argument(
        "--type",
        dest="content_type",
        default=None,
        metavar="MIME",
        help="content type (default: from the name or the bytes); "
        "application/octet-stream sends a photo untouched, as a document",
    )
    send.add_argument("--name", dest="file_name", default=None, help="file name shown to others")
    send.add_argument("--quiet", action="store_true", help="no progress on stderr")
    send.set_defaults(uses_media=True)

    download = add("download", _download, "download, verify and decrypt the file a message carries")
    download.add_argument("conversation", metavar="@HANDLE|CONVERSATION")
    download.add_argument("message", metavar="MESSAGE", help="message id or #SEQ")
    download.add_argument(
        "--out",
        default=None,
        metavar="PATH",
        help="file or directory to write (default: the sender's file name here; - for stdout)",
    )
    download.add_argument("--thumbnail", action="store_true", help="the preview instead")
    download.add_argument("--force", action="store_true", help="overwrite an existing file")
    download.set_defaults(uses_media=True)


def _file_to_send(path: Path) -> str:
    """The absolute path of the file, which must be there."""
    if not path.is_file():
        raise UsageError(f"{path} is not a file")
    return str(path.resolve())


async def _send_file(args: argparse.Namespace) -> int:
    path: Path = args.path
    absolute = _file_to_send(path)
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        # An interrupted send of this file here goes on under its request id.
        request_id = next(
            (
                p.request_id
                for p in client.pending_uploads()
                if p.conversation_id == conversation_id and p.path == absolute
            ),
            None,
        )
        if request_id is not None:
            warn(f"resuming the interrupted upload of {path.name}")
        progress = None if args.quiet else _progress_printer()
        sent = await client.send_file(
            conversation_id,
            path,
            content_type=args.content_type,
            file_name=args.file_name,
            caption=args.caption,
            request_id=request_id,
            progress=progress,
        )
        message = sent.message
        emit(
            f"sent #{message.seq} {describe_file(sent.attachment)} at "
            f"{local_time(message.create_time)} uploaded={sent.uploaded_bytes} "
            f"conversation={conversation_id} message={message.message_id} "
            f"media={sent.attachment.media_id}"
        )
    return 0


def _progress_printer() -> ProgressCallback:
    shown = [-1]

    def show(done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent != shown[0] and sys.stderr.isatty():
            shown[0] = percent
            print(f"\ruploading {percent}%", end="", file=sys.stderr, flush=True)
            if done >= total:
                print(file=sys.stderr, flush=True)

    return show


async def _download(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = await resolve_conversation(client, args.conversation)
        message = await find_message(client, conversation_id, args.message)
        decrypted = await client.decrypt(message)
        attachment = decrypted.attachment
        if attachment is None:
            why = decrypted.error or "it carries no file"
            raise UsageError(f"message #{message.seq} cannot be downloaded: {why}")
        if args.thumbnail and attachment.thumbnail is None:
            raise UsageError(f"message #{message.seq} has no thumbnail")
        if args.out == "-":
            data = await client.download(attachment, thumbnail=args.thumbnail)
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
            return 0
        target = target_path(attachment, args.out, thumbnail=args.thumbnail)
        if target.exists() and not args.force:
            raise UsageError(f"{target} exists; pass --force to overwrite it")
        written = await client.download(attachment, dest=target, thumbnail=args.thumbnail)
        emit(f"saved {written} {describe_file(attachment)} message={message.message_id}")
    return 0


def target_path(attachment: Attachment, out: str | None, *, thumbnail: bool) -> Path:
    """Where a download goes: ``out`` as a file, or the sender's name inside
    ``out`` (a directory) or the current directory."""
    name = Path(attachment.file_name.replace("\\", "/")).name or attachment.media_id[:24]
    if thumbnail:
        name = f"{Path(name).stem}.thumbnail.jpg"
    if out is None:
        return Path.cwd() / name
    chosen = Path(out)
    return chosen / name if chosen.is_dir() else chosen


async def find_message(client: Client, conversation_id: str, ref: str) -> Message:
    """The message ``ref`` names: #SEQ (or SEQ), or a message id among the newest."""
    digits = ref.removeprefix("#")
    if digits.isdigit():
        seq = int(digits)
        async for message in client.list_messages(
            conversation_id, direction=Direction.FORWARD, start_seq=seq, page_size=1
        ):
            if message.seq == seq:
                return message
            break
        raise UsageError(f"no message #{seq} in {conversation_id} (or it is hidden from you)")
    seen = 0
    async for message in client.list_messages(conversation_id, page_size=200):
        if message.message_id == ref:
            return message
        seen += 1
        if seen >= SEARCH_LIMIT:
            break
    raise UsageError(
        f"no message {ref} among the newest {SEARCH_LIMIT} of {conversation_id}; name it by #SEQ"
    )
