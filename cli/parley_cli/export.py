"""``parley export start/status/list/cancel/download``: exports of this
account's history ("download my history")."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from parley_cli.common import Commands, connect, positive_int, resolve_conversation
from parley_cli.output import emit, warn
from parley_cli.profiles import ProfileStore
from parley_sdk import ExportState, HistoryExport

__all__ = ["format_export", "register_export_commands"]

# Seconds between looks at an export while waiting for it.
POLL_SECONDS = 1.0


def format_export(export: HistoryExport) -> str:
    scope = export.conversation_id or "all"
    line = (
        f"{export.export_id} {export.state.name.lower()} {scope} "
        f"parts={export.objects_done}/{export.objects_total} "
        f"bytes={export.bytes_done}/{export.bytes_total} {export.progress:.0%}"
    )
    if export.eta is not None:
        line += f" eta={int(export.eta.total_seconds())}s"
    if export.state is ExportState.READY:
        line += f" messages={export.message_count}"
        if export.expire_time is not None:
            line += f" expires={export.expire_time.astimezone():%Y-%m-%d %H:%M}"
    if export.failure:
        line += f" failure={export.failure!r}"
    return line


def register_export_commands(commands: Commands) -> None:
    add = commands.add
    export = commands.group("export", "exports of this account's history (download my history)")
    start = add("start", _start, "start an export of one conversation, or of all", under=export)
    start.add_argument(
        "conversation",
        nargs="?",
        default=None,
        metavar="@HANDLE|CONVERSATION",
        help="only this conversation (default: every conversation)",
    )
    status = add("status", _status, "an export's state and progress", under=export)
    status.add_argument("export_id", metavar="EXPORT")
    add("list", _list, "this account's exports, newest first", under=export)
    cancel = add("cancel", _cancel, "cancel an unfinished export", under=export)
    cancel.add_argument("export_id", metavar="EXPORT")
    download = add(
        "download",
        _download,
        "write a READY export's records (JSON lines) to a file or stdout",
        under=export,
    )
    download.add_argument("export_id", metavar="EXPORT")
    download.add_argument("--out", type=Path, default=None, help="file to write (default: stdout)")
    download.add_argument(
        "--wait",
        type=positive_int,
        default=None,
        metavar="SECONDS",
        help="wait up to this long for the export to be READY (progress on stderr)",
    )


async def _start(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        conversation_id = None
        if args.conversation:
            conversation_id = await resolve_conversation(client, args.conversation)
        emit(format_export(await client.request_history_export(conversation_id)))
    return 0


async def _status(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        emit(format_export(await client.get_history_export(args.export_id)))
    return 0


async def _list(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        found = 0
        async for export in client.iter_history_exports():
            emit(format_export(export))
            found += 1
        if not found:
            emit("(no exports)")
    return 0


async def _cancel(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        emit(format_export(await client.cancel_history_export(args.export_id)))
    return 0


async def _download(args: argparse.Namespace) -> int:
    client, _ = await connect(args, ProfileStore())
    async with client:
        export = await client.get_history_export(args.export_id)
        deadline = time.monotonic() + (args.wait or 0)
        while export.state in (ExportState.QUEUED, ExportState.RESTORING, ExportState.RUNNING):
            if time.monotonic() >= deadline:
                break
            warn(format_export(export))
            await asyncio.sleep(POLL_SECONDS)
            export = await client.get_history_export(args.export_id)
        if export.state is not ExportState.READY:
            warn(f"error: not ready: {format_export(export)}")
            return 1
        records = await client.download_history_export(args.export_id)
        lines = "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in records)
        if args.out is None:
            sys.stdout.write(lines)
            sys.stdout.flush()
        else:
            args.out.write_text(lines)
            warn(f"wrote {len(records)} records to {args.out}")
    return 0
