"""Plain-text rendering for the CLI: one line per item, stable enough to grep."""

from __future__ import annotations

import sys
from datetime import UTC

from google.protobuf import timestamp_pb2

from parley_sdk.client import Client
from parley_sdk.errors import ParleyError
from parley_sdk.models import Message, MessageType, Watermarks

__all__ = ["Directory", "emit", "format_message", "format_receipt", "local_time", "warn"]


def emit(line: str) -> None:
    # Flushed per line: followers are often piped into a file or another program.
    print(line, flush=True)


def warn(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def local_time(stamp: timestamp_pb2.Timestamp, *, with_date: bool = False) -> str:
    if not stamp.seconds and not stamp.nanos:
        return "--:--:--"
    moment = stamp.ToDatetime(tzinfo=UTC).astimezone()
    return moment.strftime("%Y-%m-%d %H:%M:%S" if with_date else "%H:%M:%S")


def render_body(message: Message) -> str:
    if int(message.type) in (MessageType.TEXT, MessageType.UNSPECIFIED):
        text = message.body.decode("utf-8", errors="replace")
        # One message, one line: escape what would break the line structure.
        return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")
    try:
        kind = MessageType(message.type).name.lower()
    except ValueError:
        kind = f"type {message.type}"
    return f"<{kind}, {len(message.body)} bytes>"


class Directory:
    """Account id -> handle, asking the server once per account."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._handles: dict[str, str] = {}

    def remember(self, account_id: str, handle: str) -> None:
        self._handles[account_id] = handle

    async def handle(self, account_id: str) -> str:
        if account_id not in self._handles:
            try:
                account = await self._client.get_account(account_id=account_id)
                self._handles[account_id] = account.handle
            except ParleyError:
                # Showing the id beats failing the whole listing over one lookup.
                return account_id
        return self._handles[account_id]


async def format_message(
    message: Message, directory: Directory, *, with_date: bool = False, conversation: bool = False
) -> str:
    sender = await directory.handle(message.sender_account_id)
    where = f"{message.conversation_id} " if conversation else ""
    when = local_time(message.create_time, with_date=with_date)
    return f"{where}#{message.seq} {when} @{sender}: {render_body(message)}"


async def format_receipt(watermarks: Watermarks, directory: Directory) -> str:
    member = await directory.handle(watermarks.account_id)
    return f"@{member} delivered=#{watermarks.delivered_seq} read=#{watermarks.read_seq}"
