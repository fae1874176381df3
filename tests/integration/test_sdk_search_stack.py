"""Search on the device against the real stack: what the stream brings is
searchable at once, edits and deletes (for me, for everyone) follow, and a
backfill SIGKILLed mid-way resumes from its checkpoint, writing every readable
message exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import sys
from pathlib import Path

import pytest

from parley_dev.stack import LocalStack
from parley_sdk import Client, DeleteScope, DeviceStore, SearchIndex
from tests.helpers import wait_until
from tests.integration.test_sdk_cli import read_until, run_cli
from tests.sdk_e2ee_inbox import WAIT, connect, listening, new_user, unique


async def texts(client: Client, query: str, conversation_id: str | None = None) -> list[str]:
    return [r.text async for r in client.iter_search(query, conversation_id=conversation_id)]


async def eventually(client: Client, query: str, expected: list[str]) -> None:
    async def matches() -> bool:
        return await texts(client, query) == expected

    await wait_until(matches, timeout=WAIT, what=f"search {query!r} -> {expected}")


async def test_the_index_follows_the_stream(stack: LocalStack, tmp_path: Path) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "salice")
    bob = await new_user(stack, tmp_path / "bob.db", "sbob")
    async with alice, bob:
        chat = await alice.create_direct_conversation(bob.account_id)
        chat_id = chat.conversation.conversation_id
        group = await alice.create_group("Trip", members=[bob.account_id])
        group_id = group.conversation.conversation_id
        async with listening(bob):
            lunch = await alice.send_text(chat_id, "Lunch at the Café Müller?")
            await alice.send_text(group_id, "我明天去北京出差")
            await eventually(bob, "cafe", ["Lunch at the Café Müller?"])
            await eventually(bob, "北京", ["我明天去北京出差"])
            assert await texts(bob, "mueller", chat_id) == ["Lunch at the Café Müller?"]
            assert await texts(bob, "mueller", group_id) == []

            await alice.edit_text(chat_id, lunch.message_id, "Dinner at the Café Müller?")
            await eventually(bob, "dinner", ["Dinner at the Café Müller?"])
            assert await texts(bob, "lunch") == []

            await alice.delete_message(chat_id, lunch.message_id, scope=DeleteScope.FOR_EVERYONE)
            await eventually(bob, "cafe", [])
            assert await texts(alice, "cafe") == []  # the sender's own index too

        # Deleted for bob only: gone from his index at once, still in alice's.
        await bob.delete_message(
            group_id, (await anext(aiter(bob.read_history(group_id)))).message_id
        )
        assert await texts(bob, "北京") == []
        assert await texts(alice, "北京") == ["我明天去北京出差"]
        page = await alice.search("北京")
        [result] = page.results
        assert result.snippet == "我明天去[北京]出差"
        assert (result.conversation_id, result.sender_account_id) == (group_id, alice.account_id)


CHILD = """
import asyncio, sys
from parley_sdk import Client

async def main(store, keys, message, presence, page, pause):
    async with await Client.connect(
        store=store, keys_target=keys, message_target=message, presence_target=presence
    ) as client:
        async def progress(done, total):
            print(f"progress {done} {total}", flush=True)
            await asyncio.sleep(pause)

        report = await client.backfill_search_index(progress=progress, page_size=page)
        print(f"finished {report.indexed} {report.done} {report.total}", flush=True)

store, keys, message, presence, page, pause = sys.argv[1:]
asyncio.run(main(store, keys, message, presence, int(page), float(pause)))
"""


async def run_backfill(
    stack: LocalStack, store: Path, *, page: int, pause: float
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(store),
        stack.keys_target,
        stack.message_targets[0],
        stack.presence_target,
        str(page),
        str(pause),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


def progress_of(line: str) -> tuple[int, int]:
    _, done, total = line.split()
    return int(done), int(total)


POSTS = 90


@pytest.mark.slow
async def test_a_killed_backfill_resumes_and_writes_each_message_once(
    stack: LocalStack, tmp_path: Path
) -> None:
    alice = await new_user(stack, tmp_path / "alice.db", "kalice")
    store = tmp_path / "bob.db"
    bob = await new_user(stack, store, "kbob")
    async with alice, bob:
        news = await alice.create_channel("News", public=True)
        news_id = news.conversation.conversation_id
        await bob.subscribe_channel(news_id)
        for number in range(POSTS):
            await alice.send_text(news_id, f"post {number} from 東京都")
        chat = await alice.create_direct_conversation(bob.account_id)
        chat_id = chat.conversation.conversation_id
        for number in range(6):
            await alice.send_text(chat_id, f"direct note {number}")
        read = [m async for m in bob.read_history(chat_id)]
        await bob.delete_message(chat_id, read[0].message_id)  # deleted for bob only
        assert len(await texts(bob, "direct")) == 5

    # The store of an SDK from before search: the history, no index yet. Every
    # write of a message into the index is counted from here.
    device = DeviceStore.open(store)
    SearchIndex(device)
    db = device.connection
    db.execute("DELETE FROM search_docs")
    db.execute("INSERT INTO search_fts (search_fts) VALUES ('delete-all')")
    db.execute("CREATE TABLE writes (message_key NOT NULL)")
    db.execute(
        "CREATE TRIGGER count_writes AFTER INSERT ON search_docs"
        " BEGIN INSERT INTO writes VALUES (new.message_key); END"
    )
    device.close()

    first = await run_backfill(stack, store, page=10, pause=0.3)
    assert first.stdout is not None
    done, total = 0, 0
    for _ in range(100):  # lines, each one page; the kill comes a third of the way in
        done, total = progress_of((await read_until(first.stdout, "progress", timeout=60))[-1])
        if done >= 30:
            break
    first.send_signal(signal.SIGKILL)
    await asyncio.wait_for(first.wait(), 10)
    assert first.returncode == -signal.SIGKILL
    assert 0 < done < total

    with sqlite3.connect(store) as peek:
        partial = peek.execute("SELECT count(*) FROM search_docs").fetchone()[0]
    assert 0 < partial < POSTS + 5

    second = await run_backfill(stack, store, page=10, pause=0)
    assert second.stdout is not None
    lines = await read_until(second.stdout, "finished", timeout=60)
    _, err = await asyncio.wait_for(second.communicate(), 30)
    assert second.returncode == 0, err.decode()
    resumed = progress_of(lines[0])
    assert resumed[0] == 0 and resumed[1] < total  # only what the kill left
    indexed, walked, remaining = (int(x) for x in lines[-1].split()[1:])
    assert walked == remaining == resumed[1]
    assert indexed == POSTS + 5 - partial

    with sqlite3.connect(store) as peek:
        writes = [row[0] for row in peek.execute("SELECT message_key FROM writes")]
    assert len(writes) == len(set(writes)) == POSTS + 5

    async with await connect(stack, store) as again:
        posts = await texts(again, "東京", news_id)
        assert len(posts) == POSTS
        assert posts[0] == f"post {POSTS - 1} from 東京都"  # newest first
        assert len(await texts(again, "direct", chat_id)) == 5
        report = await again.backfill_search_index()
        assert (report.total, report.indexed) == (0, 0)


@pytest.mark.slow
async def test_the_cli_searches_its_profile(stack: LocalStack, tmp_path: Path) -> None:
    home = tmp_path / "parley-home"
    targets = ["--keys-target", stack.keys_target, "--message-target", stack.message_targets[0]]
    ann, ben = unique("sann"), unique("sben")
    for profile, handle in (("a", ann), ("b", ben)):
        code, _, err = await run_cli(home, "signup", handle, "--profile", profile, *targets)
        assert code == 0, err
    code, _, err = await run_cli(home, "send", f"@{ben}", "l'arbre", "du", "Café", "--profile", "a")
    assert code == 0, err

    # The sender indexed what it sent.
    code, out, err = await run_cli(home, "search", "cafe", "--profile", "a")
    assert code == 0, err
    [line] = out.splitlines()
    assert line.endswith(f"@{ann}: l'arbre du [Café]"), line
    # The reader has not read it yet: a backfill reads and indexes it.
    code, out, _ = await run_cli(home, "search", "arbre", "--profile", "b")
    assert out.strip() == "(no matches)"
    code, out, err = await run_cli(
        home, "search", "arbre", "--conversation", f"@{ann}", "--backfill", "--profile", "b"
    )
    assert code == 0, err
    assert out.strip().endswith(f"@{ann}: [l'arbre] du Café"), out
    assert "indexing history:" in err
    code, _, err = await run_cli(home, "search", "🍕", "--profile", "b")
    assert code == 2
    assert "no words" in err
