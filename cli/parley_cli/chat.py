"""The live CLI commands: ``parley follow`` and ``parley chat``."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import replace
from typing import TextIO

from parley_cli.output import (
    Directory,
    emit,
    format_message,
    format_receipt,
    local_time,
    one_line,
    warn,
)
from parley_cli.profiles import Profile, ProfileStore
from parley_sdk import (
    Client,
    ConversationEvent,
    DeleteScope,
    GroupReceiptsEvent,
    MessageDeletedEvent,
    MessageEditedEvent,
    MessageEvent,
    ParleyError,
    ReactionChangedEvent,
    ReceiptEvent,
    SettingsEvent,
    StreamEvent,
    SyncCompleteEvent,
    SystemMessageEvent,
    TypingIndicatorEvent,
    TypingTracker,
    Watermarks,
    muted_forever,
    muted_until,
)

__all__ = ["describe_change", "run_chat", "run_follow"]


class _ReceiptFilter:
    """Passes receipts that move a watermark forward.

    Watermarks never go down, so a receipt at or below what was shown is a replay
    or arrived out of order; either way it says nothing new.
    """

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], tuple[int, int]] = {}

    def advance(self, watermarks: Watermarks) -> Watermarks | None:
        """The merged watermarks to show, or None when nothing moved."""
        key = (watermarks.conversation_id, watermarks.account_id)
        delivered, read = self._seen.get(key, (-1, -1))
        if watermarks.delivered_seq <= delivered and watermarks.read_seq <= read:
            return None
        delivered = max(delivered, watermarks.delivered_seq)
        read = max(read, watermarks.read_seq)
        self._seen[key] = (delivered, read)
        return Watermarks(
            conversation_id=watermarks.conversation_id,
            account_id=watermarks.account_id,
            delivered_seq=delivered,
            read_seq=read,
        )


async def describe_change(event: StreamEvent, directory: Directory) -> str | None:
    """An edit, deletion or reaction in words (without the conversation); None otherwise."""
    if isinstance(event, MessageEditedEvent):
        edit = event.edit
        if event.text is not None:
            body = one_line(event.text)
        elif event.decryption_error is not None:
            body = f"<cannot decrypt: {one_line(event.decryption_error)}>"
        else:
            body = one_line(edit.body.decode("utf-8", errors="replace"))
        return f"#{edit.seq} edited {local_time(edit.edit_time)}: {body}"
    if isinstance(event, MessageDeletedEvent):
        deletion = event.deletion
        who = await directory.handle(deletion.account_id)
        if event.scope is DeleteScope.FOR_EVERYONE:
            return f"#{deletion.seq} deleted for everyone by @{who}"
        return f"#{deletion.seq} deleted for @{who} only"
    if isinstance(event, ReactionChangedEvent):
        reaction = event.reaction
        who = await directory.handle(reaction.account_id)
        sign = "-" if reaction.removed else "+"
        return f"#{reaction.seq} @{who} {sign}{reaction.emoji}"
    return None


async def run_follow(
    client: Client, profile: Profile, store: ProfileStore, *, exit_after: float | None
) -> int:
    directory = Directory(client)
    directory.remember(client.account_id, profile.handle)
    receipts = _ReceiptFilter()
    stream = client.events(sync_token=profile.sync_token)

    async def consume() -> None:
        async for event in stream:
            if isinstance(event, MessageEvent):
                line = await format_message(
                    event.message,
                    directory,
                    conversation=True,
                    text=event.text,
                    error=event.decryption_error,
                    attachment=event.attachment,
                )
                emit("message " + line)
            elif isinstance(event, SystemMessageEvent):
                emit("system " + await format_message(event.message, directory, conversation=True))
            elif isinstance(event, MessageEditedEvent | MessageDeletedEvent | ReactionChangedEvent):
                kind = {
                    MessageEditedEvent: "edit",
                    MessageDeletedEvent: "delete",
                    ReactionChangedEvent: "reaction",
                }[type(event)]
                emit(f"{kind} {event.conversation_id} {await describe_change(event, directory)}")
            elif isinstance(event, ReceiptEvent | GroupReceiptsEvent):
                marks = [event.watermarks] if isinstance(event, ReceiptEvent) else event.watermarks
                for mark in marks:
                    # Our own watermarks move because we ack; echoing them is noise.
                    if mark.account_id == client.account_id:
                        continue
                    if (watermarks := receipts.advance(mark)) is not None:
                        emit(
                            f"receipt {watermarks.conversation_id} "
                            + await format_receipt(watermarks, directory)
                        )
            elif isinstance(event, SettingsEvent):
                settings = event.settings
                muted = "no"
                if muted_forever(settings):
                    muted = "forever"
                elif (until := muted_until(settings)) is not None:
                    muted = until.astimezone().strftime("%Y-%m-%dT%H:%M")
                emit(
                    f"settings {settings.conversation_id} pinned={_yes(settings.pinned)} "
                    f"muted={muted} archived={_yes(settings.archived)} "
                    f"marked-unread={_yes(settings.marked_unread)}"
                )
            elif isinstance(event, ConversationEvent):
                conversation = event.conversation
                members = [f"@{await directory.handle(a)}" for a in conversation.member_account_ids]
                emit(f"conversation {conversation.conversation_id} {','.join(members)}")
            elif isinstance(event, TypingIndicatorEvent):
                state = "started" if event.typing else "stopped"
                who = await directory.handle(event.account_id)
                emit(f"typing {event.conversation_id} @{who} {state}")
            elif isinstance(event, SyncCompleteEvent):
                # Reload first: a token refresh may have rewritten the profile.
                store.save(replace(store.load(profile.name), sync_token=event.sync_token))
                emit("synced: live events follow")

    async with stream:
        warn(f"following as @{profile.handle}; Ctrl-C to stop")
        try:
            await asyncio.wait_for(consume(), exit_after)
        except TimeoutError:
            return 0
    warn("the server ended the stream")
    return 0


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _stdin_lines(source: TextIO) -> asyncio.Queue[str | None]:
    """Lines of ``source`` as they come, then None at EOF.

    A daemon thread, not the event loop, reads: reading a terminal blocks, and a
    loop reader (connect_read_pipe) rejects regular files redirected to stdin.
    """
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    def put(item: str | None) -> None:
        # The loop may be gone when the user quits while this thread still reads.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def pump() -> None:
        try:
            for line in source:
                put(line)
        finally:
            put(None)

    threading.Thread(target=pump, name="parley-stdin", daemon=True).start()
    return queue


async def run_chat(
    client: Client,
    profile: Profile,
    *,
    conversation_id: str,
    peer: tuple[str, str],
    linger: float,
    stdin: TextIO,
) -> int:
    peer_id, peer_handle = peer
    directory = Directory(client)
    directory.remember(client.account_id, profile.handle)
    directory.remember(peer_id, peer_handle)
    receipts = _ReceiptFilter()
    typists = TypingTracker(ignore_account_id=client.account_id)
    my_device = client.device_id
    stream = client.events()

    async def incoming() -> None:
        read_up_to = 0
        async for event in stream:
            started = typists.observe(event) and (
                isinstance(event, TypingIndicatorEvent)
                and event.typing
                and (event.conversation_id, event.account_id) == (conversation_id, peer_id)
            )
            if started:
                # Only the start shows: a line-based terminal cannot take a line
                # back when the indicator stops or expires.
                emit(f".. @{peer_handle} is typing…")
            if isinstance(event, MessageEvent):
                message = event.message
                # Lines sent from here are printed when the send returns.
                if message.conversation_id != conversation_id or (
                    message.sender_device_id == my_device
                ):
                    continue
                emit(
                    await format_message(
                        message,
                        directory,
                        text=event.text,
                        error=event.decryption_error,
                        attachment=event.attachment,
                    )
                )
                if message.sender_account_id != client.account_id and message.seq > read_up_to:
                    read_up_to = message.seq
                    # Shown in a chat window is read; the peer sees it as a receipt.
                    try:
                        await client.mark_read(conversation_id, message.seq)
                    except ParleyError as error:
                        warn(f"warning: could not mark #{message.seq} read: {error}")
            elif isinstance(event, MessageEditedEvent | MessageDeletedEvent | ReactionChangedEvent):
                if event.conversation_id == conversation_id:
                    emit(f".. {await describe_change(event, directory)}")
            elif isinstance(event, ReceiptEvent):
                watermarks = event.watermarks
                if (
                    watermarks.conversation_id != conversation_id
                    or watermarks.account_id != peer_id
                ):
                    continue
                if (merged := receipts.advance(watermarks)) is not None:
                    emit(".. " + await format_receipt(merged, directory))

    async def outgoing() -> None:
        lines = _stdin_lines(stdin)
        while (line := await lines.get()) is not None:
            text = line.rstrip("\r\n")
            if not text.strip():
                continue
            sent = await client.send_text(conversation_id, text)
            emit(await format_message(sent.message, directory, text=sent.text))
        if linger > 0:
            await asyncio.sleep(linger)

    warn(f"chatting with @{peer_handle} in {conversation_id}; Ctrl-D to quit")
    async with stream:
        reader = asyncio.create_task(incoming())
        writer = asyncio.create_task(outgoing())
        try:
            done, _ = await asyncio.wait({reader, writer}, return_when=asyncio.FIRST_COMPLETED)
            if writer in done:
                writer.result()
                return 0
            reader.result()
            warn("the server ended the stream")
            return 1
        finally:
            writer.cancel()
            await stream.close()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError, ParleyError):
                await asyncio.wait_for(reader, 5)
            with contextlib.suppress(asyncio.CancelledError):
                await writer
