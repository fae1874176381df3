"""Plain-text rendering for the CLI: one line per item, stable enough to grep."""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from google.protobuf import timestamp_pb2

from parley_sdk import (
    Attachment,
    Client,
    ConversationType,
    ConversationView,
    Member,
    MembershipState,
    Message,
    MessageType,
    ParleyError,
    Role,
    SystemAction,
    Watermarks,
    muted_forever,
    muted_until,
)

__all__ = [
    "Directory",
    "describe_file",
    "describe_system",
    "emit",
    "format_member",
    "format_message",
    "format_receipt",
    "format_view",
    "local_time",
    "one_line",
    "warn",
]


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


def one_line(text: str) -> str:
    """Escapes what would break the one-item-per-line structure."""
    return text.replace("\\", "\\\\").replace("\r", "\\r").replace("\n", "\\n")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


def describe_file(attachment: Attachment) -> str:
    """``[file "crag.jpg" image/jpeg 2.1 MB 4032x3024]``"""
    name = f'"{one_line(attachment.file_name)}" ' if attachment.file_name else ""
    size = human_size(attachment.plaintext_size)
    pixels = f" {attachment.width}x{attachment.height}" if attachment.width else ""
    return f"[file {name}{attachment.content_type} {size}{pixels}]"


def render_body(
    message: Message,
    text: str | None = None,
    error: str | None = None,
    attachment: Attachment | None = None,
) -> str:
    """The decrypted ``text`` if there is one (with the file it carries); without,
    why not, or (for clients without encryption) the body as UTF-8."""
    if message.deleted:
        return "<deleted>"
    if attachment is not None:
        caption = f" {one_line(text)}" if text else ""
        return describe_file(attachment) + caption
    if text is not None:
        return one_line(text)
    if error is not None:
        return f"<cannot decrypt: {one_line(error)}>"
    if int(message.type) in (MessageType.TEXT, MessageType.UNSPECIFIED):
        return one_line(message.body.decode("utf-8", errors="replace"))
    kind = MessageType(message.type).name.lower()
    return f"<{kind}, {len(message.body)} bytes>"


def _role_name(role: int) -> str:
    return Role(role).name.lower()


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


async def describe_system(message: Message, directory: Directory) -> str:
    """A system message in words: ``@ann added @bob, @cy``."""
    system = message.system
    actor = f"@{await directory.handle(system.actor_account_id)}"
    targets = ", ".join([f"@{await directory.handle(a)}" for a in system.target_account_ids])
    action = SystemAction(system.action)
    if action is SystemAction.CREATED:
        return f'{actor} created "{one_line(system.title)}"'
    if action is SystemAction.MEMBERS_ADDED:
        return f"{actor} added {targets}"
    if action is SystemAction.MEMBER_REMOVED:
        return f"{actor} removed {targets}"
    if action is SystemAction.MEMBER_LEFT:
        return f"{actor} left"
    if action is SystemAction.ROLE_CHANGED:
        return f"{actor} made {targets} {_role_name(system.role)}"
    if action is SystemAction.INFO_CHANGED:
        return f'{actor} changed the info: title "{one_line(system.title)}"' + (
            f" avatar={system.avatar_ref}" if system.avatar_ref else ""
        )
    if action is SystemAction.SUBSCRIBED:
        return f"{actor} subscribed"
    if action is SystemAction.SEARCH_CHANGED:
        return f"{actor} turned server search {'on' if system.server_search else 'off'}"
    return f"{actor} {action.name.lower()} {targets}".rstrip()


async def format_message(
    message: Message,
    directory: Directory,
    *,
    with_date: bool = False,
    conversation: bool = False,
    text: str | None = None,
    error: str | None = None,
    attachment: Attachment | None = None,
) -> str:
    """One history line; ``text``/``error``/``attachment`` are the decryption's outcome."""
    where = f"{message.conversation_id} " if conversation else ""
    when = local_time(message.create_time, with_date=with_date)
    if MessageType(message.type) is MessageType.SYSTEM:
        return f"{where}#{message.seq} {when} * {await describe_system(message, directory)}"
    sender = await directory.handle(message.sender_account_id)
    marks = []
    if message.forwarded:
        marks.append("(forwarded)")
    if message.reply_to_message_id:
        marks.append(f"(reply to {message.reply_to_message_id})")
    prefix = " ".join(marks) + " " if marks else ""
    body = render_body(message, text, error, attachment)
    line = f"{where}#{message.seq} {when} @{sender}: {prefix}{body}"
    # A tombstone shows only that it was deleted.
    if message.edited and not message.deleted:
        line += " (edited)"
    if message.reactions and not message.deleted:
        line += " [" + " ".join(f"{r.emoji}{r.count}" for r in message.reactions) + "]"
    return line


async def format_member(member: Member, directory: Directory) -> str:
    return (
        f"@{await directory.handle(member.account_id)} role={_role_name(member.role)} "
        f"joined=#{member.joined_seq} account={member.account_id}"
    )


async def format_view(view: ConversationView, directory: Directory, me: str) -> str:
    """An inbox row: who or what, unread count, last message, flags, id."""
    conversation = view.conversation
    kind = ConversationType(conversation.type)
    if kind in (ConversationType.GROUP, ConversationType.CHANNEL):
        count = "subscribers" if kind is ConversationType.CHANNEL else "members"
        name = (
            f'{kind.name.lower()} "{one_line(conversation.title)}" '
            f"{count}={conversation.member_count} role={_role_name(view.role)}"
        )
    else:
        others = [a for a in conversation.member_account_ids if a != me]
        name = ",".join([f"@{await directory.handle(a)}" for a in others or [me]])
    last = "last=none"
    if view.HasField("last_message"):
        summary = view.last_message
        sender = await directory.handle(summary.sender_account_id)
        last = f"last=#{summary.seq} @{sender} {local_time(summary.create_time)}"
    flags = []
    settings = view.settings
    if settings.pinned:
        flags.append("pinned")
    if muted_forever(settings):
        flags.append("muted")
    elif (until := muted_until(settings)) is not None and until > datetime.now(UTC):
        flags.append(f"muted-until={until.astimezone().strftime('%Y-%m-%dT%H:%M')}")
    if settings.archived:
        flags.append("archived")
    if settings.marked_unread:
        flags.append("marked-unread")
    if MembershipState(view.membership_state) is MembershipState.LEFT:
        flags.append("left")
    flag_text = "".join(f" {flag}" for flag in flags)
    return (
        f"{name} unread={view.unread_count} {last}{flag_text} "
        f"conversation={conversation.conversation_id}"
    )


async def format_receipt(watermarks: Watermarks, directory: Directory) -> str:
    member = await directory.handle(watermarks.account_id)
    return f"@{member} delivered=#{watermarks.delivered_seq} read=#{watermarks.read_seq}"
