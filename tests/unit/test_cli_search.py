"""`parley search` without servers: its arguments and its result lines."""

from __future__ import annotations

from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from parley_cli import build_parser
from parley_cli.output import Directory
from parley_cli.search import _line
from parley_sdk import SearchResult

CONVERSATION = "0190f2a4-1111-7000-8000-000000000001"


def test_search_parses() -> None:
    args = build_parser().parse_args(["search", "lunch", "tomorrow"])
    assert (args.query, args.conversation, args.limit, args.backfill) == (
        ["lunch", "tomorrow"],
        None,
        20,
        False,
    )
    args = build_parser().parse_args(
        ["search", "hel*", "--conversation", "@bob", "--limit", "5", "--backfill"]
    )
    assert (args.query, args.conversation, args.limit, args.backfill) == (
        ["hel*"],
        "@bob",
        5,
        True,
    )
    for argv in (["search"], ["search", "x", "--limit", "0"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


class Accounts:
    async def get_account(self, *, account_id: str = "", handle: str = "") -> Any:
        return SimpleNamespace(account_id=account_id, handle="bob")


async def test_a_result_is_one_line_with_where_who_and_the_snippet() -> None:
    result = SearchResult(
        conversation_id=CONVERSATION,
        message_id="m",
        seq=7,
        sender_account_id="b",
        sender_device_id="d",
        sent_at=datetime(2026, 3, 1, 12, 30, tzinfo=UTC),
        text="first line\nLunch at noon",
        snippet="first line Lunch at [noon]",
        highlights=((20, 24),),
    )
    line = await _line(result, Directory(Accounts()))  # type: ignore[arg-type]
    assert line.startswith(f"{CONVERSATION} #7 ")
    assert line.endswith(" @bob: first line Lunch at [noon]")


def test_server_search_options_parse() -> None:
    args = build_parser().parse_args(["search", "lunch", "--server", "--search-target", "h:9"])
    assert (args.server, args.search_target) == (True, "h:9")
    assert build_parser().parse_args(["search", "lunch"]).server is False
    toggle = build_parser().parse_args(["server-search", "on", "@bob"])
    assert (toggle.state, toggle.conversation) == ("on", "@bob")
    assert build_parser().parse_args(["server-search", "off", CONVERSATION]).state == "off"
    for argv in (["server-search", "maybe", "@bob"], ["server-search", "on"]):
        with pytest.raises(SystemExit):
            build_parser().parse_args(argv)


def test_an_unreachable_search_service_is_named_only_for_server_search() -> None:
    from parley_cli.targets import Targets

    targets = Targets("k:1", "m:2", "p:3", search="s:5")
    assert ("svc_search", "s:5") in targets.named(search=True)
    assert all(name != "svc_search" for name, _ in targets.named())
