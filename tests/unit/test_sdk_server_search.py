"""The SDK's side of the server blind index over an in-memory server
(tests/sdk_blind_fakes.py): epoch keys reach exactly the members of their
epoch, sends and edits upload tokens, deletes remove them, queries go out in
the fixed shape and drop false positives, and two keys for one epoch both work."""

from __future__ import annotations

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley.search.v1 import search_pb2
from parley_sdk import QueryError, SystemMessageEvent
from parley_sdk._blind_tokens import term_token
from parley_sdk._secure import E2EE
from tests.sdk_blind_fakes import BlindFakeServer, blind_device


async def say(device: E2EE, conversation_id: str, text: str) -> pb.Message:
    sent = await device.send_text(conversation_id, text, reply_to_message_id="", forwarded=False)
    return sent.message


async def found(
    device: E2EE, query: str, conversation_id: str | None = None, page_size: int = 50
) -> list[str]:
    page = await device.server.search(
        query,
        conversation_id=conversation_id,
        page_size=page_size,
        page_token=None,
        marks=("[", "]"),
    )
    return [r.text for r in page.results]


async def trio() -> tuple[BlindFakeServer, str, E2EE, E2EE, E2EE]:
    server = BlindFakeServer()
    alice = await blind_device(server, "alice", "a1")
    bob = await blind_device(server, "bob", "b1")
    carol = await blind_device(server, "carol", "c1")
    group = server.group("alice", ["bob", "carol"])
    return server, group, alice, bob, carol


async def turn_on(server: BlindFakeServer, device: E2EE, group: str) -> None:
    seq = server.set_server_search(group, device.me.account_id, True)
    await device.server.after_change(group, seq)


async def test_messages_are_indexed_only_while_server_search_is_on() -> None:
    server, group, alice, _bob, _carol = await trio()
    await say(alice, group, "before it was on")
    assert server.index_calls == []
    await turn_on(server, alice, group)
    sent = await say(alice, group, "lunch at the café on Friday")
    [request] = server.index_calls
    assert request.message_id == sent.message_id
    assert len(request.key_id) == 16
    assert len(request.tokens) == 16  # padded to the first bucket
    # The server never sees a word: tokens are 4-byte HMACs.
    assert all(len(t) == 4 for t in request.tokens)
    assert b"lunch" not in request.SerializeToString()
    server.set_server_search(group, "alice", False)
    await say(alice, group, "after it was off")
    assert len(server.index_calls) == 1


async def test_members_get_the_key_and_find_each_others_messages() -> None:
    server, group, alice, bob, carol = await trio()
    await turn_on(server, alice, group)
    # One key went to bob's and carol's devices, sealed pairwise.
    [sent] = server.calls_to("send_sender_keys", "a1")
    assert sorted(sent) == [("bob", "b1"), ("carol", "c1")]
    await say(alice, group, "lunch at the café on Friday")
    await say(bob, group, "Friday works, which café?")
    await say(carol, group, "dinner instead")
    # Bob received alice's key (no second key made).
    assert [k.key_id for k in bob.server.keys.all_keys()] == [
        k.key_id for k in alice.server.keys.all_keys()
    ]
    assert await found(carol, "café friday") == [
        "Friday works, which café?",
        "lunch at the café on Friday",
    ]
    assert await found(alice, "dinner") == ["dinner instead"]
    assert await found(alice, "nothing") == []
    # Every request carried the deployment's exact shape.
    for request in server.search_calls:
        assert len(request.groups) == 4
        assert all(len(g.tokens) == 4 for g in request.groups)
        assert len(request.SerializeToString()) == 512


async def test_a_removed_member_gets_no_later_key_and_finds_nothing_new() -> None:
    server, group, alice, bob, carol = await trio()
    await turn_on(server, alice, group)
    await say(alice, group, "the plan is ready")
    assert await found(carol, "plan") == ["the plan is ready"]
    seq = server.remove_member(group, "alice", "carol")
    await alice.server.after_change(group, seq)
    # The new epoch's key went to bob only.
    assert sorted(server.calls_to("send_sender_keys", "a1")[-1]) == [("bob", "b1")]
    await say(alice, group, "the new plan, without carol")
    await bob.groups.claim()
    await carol.groups.claim()
    new_epoch = alice.server.keys.epoch_at(group, seq + 1)
    assert new_epoch is not None and new_epoch.seq == seq
    assert carol.server.keys.keys_of(group, seq) == []
    assert len(bob.server.keys.keys_of(group, seq)) == 1
    # The fake server does not filter by membership: the keys alone keep
    # carol's tokens from matching what was written after her removal.
    carol_ids = {k.key_id for k in carol.server.keys.all_keys()}
    assert server.index_calls[-1].key_id not in carol_ids
    assert await found(carol, "plan") == ["the plan is ready"]
    assert await found(bob, "plan") == ["the new plan, without carol", "the plan is ready"]


async def test_a_new_member_gets_only_keys_from_its_join_on() -> None:
    server, group, alice, bob, _carol = await trio()
    dave = await blind_device(server, "dave", "d1")
    await turn_on(server, alice, group)
    await say(alice, group, "old news")
    seq = server.add_member(group, "alice", "dave")
    await alice.server.after_change(group, seq)
    await dave.groups.claim()
    assert [k.epoch_seq for k in dave.server.keys.all_keys()] == [seq]
    await say(bob, group, "fresh news")
    assert await found(dave, "news") == ["fresh news"]
    assert await found(bob, "news") == ["fresh news", "old news"]


async def test_the_designated_creator_makes_the_key_when_a_member_leaves() -> None:
    server, group, alice, bob, carol = await trio()
    server.roles[(group, "bob")] = 2  # ADMIN
    await turn_on(server, alice, group)
    seq = server.remove_member(group, "alice", "alice")  # alice leaves
    left = server.messages[group][-1]
    # Every remaining device hears it; only bob (the lowest admin) makes a key.
    for device in (carol, bob):
        await device.server.on_system_message(SystemMessageEvent(left))
    assert server.calls_to("send_sender_keys", "c1") == []
    assert server.calls_to("send_sender_keys", "b1") == [[("carol", "c1")]]
    await carol.groups.claim()
    assert carol.server.keys.keys_of(group, seq) == bob.server.keys.keys_of(group, seq)


async def test_two_keys_for_one_epoch_both_keep_working() -> None:
    server, group, alice, bob, carol = await trio()
    seq = server.set_server_search(group, "alice", True)
    # Alice's device has not acted yet when bob writes: he makes a key of his
    # own and sends it. Carol, racing him, made one too before claiming his.
    await say(bob, group, "first word from bob")
    await carol.server.sync(group)
    epoch = carol.server.keys.epoch_at(group, seq)
    assert epoch is not None
    members = [m async for m in carol._client.list_members(group)]  # type: ignore[attr-defined]
    await carol.server._make_key(epoch, members)
    await say(carol, group, "carol writes under her key")
    # Alice (the designated creator) finds keys waiting and makes none.
    await alice.server.after_change(group, seq)
    assert server.calls_to("send_sender_keys", "a1") == []
    keys = alice.server.keys.keys_of(group, seq)
    assert len(keys) == 2
    by_sender = {r.message_id: r.key_id for r in server.index_calls}
    assert len(set(by_sender.values())) == 2
    # Both keep working: a query asks under both.
    assert await found(alice, "first") == ["first word from bob"]
    assert await found(alice, "carol") == ["carol writes under her key"]
    # Holding both, everyone indexes with the lowest key id.
    await bob.groups.claim()
    await say(bob, group, "now under the first key")
    assert server.index_calls[-1].key_id == keys[0].key_id
    await say(alice, group, "alice too")
    assert server.index_calls[-1].key_id == keys[0].key_id


async def test_edits_replace_the_tokens_and_deletes_remove_them() -> None:
    server, group, alice, bob, _carol = await trio()
    await turn_on(server, alice, group)
    sent = await say(alice, group, "meet at noon")
    await alice.edit_text(group, sent.message_id, "meet at dusk")
    assert [r.message_id for r in server.index_calls] == [sent.message_id] * 2
    assert await found(bob, "noon") == []
    assert await found(bob, "dusk") == ["meet at dusk"]
    await alice.server.remove(group, sent.message_id)
    assert sent.message_id not in server.postings
    server.delete_for_everyone(group, sent.message_id)
    assert await found(bob, "dusk") == []


async def test_false_positives_are_dropped_after_decrypting() -> None:
    server, group, alice, bob, _carol = await trio()
    await turn_on(server, alice, group)
    decoy = await say(alice, group, "nothing to see here")
    real = await say(alice, group, "the budget is approved")
    # A posting that collides with "budget" (as a short token may).
    [key] = alice.server.keys.all_keys()
    cid, key_id, tokens = server.postings[decoy.message_id]
    server.postings[decoy.message_id] = (cid, key_id, tokens | {term_token(key, "budget")})
    assert await found(bob, "budget") == ["the budget is approved"]
    hits = [h.message_id for r in server.responses[-1:] for h in r.hits]
    assert set(hits) == {decoy.message_id, real.message_id}


async def test_pages_merge_requests_newest_first_and_resume_from_the_store() -> None:
    server, group, alice, bob, _carol = await trio()
    await turn_on(server, alice, group)
    texts = [f"note {i}" for i in range(7)]
    for text in texts:
        await say(alice, group, text)
    seen: list[str] = []
    token: str | None = None
    for _ in range(10):
        page = await bob.server.search(
            "note", conversation_id=group, page_size=3, page_token=token, marks=("<", ">")
        )
        seen += [r.text for r in page.results]
        assert all("<note>" in r.snippet for r in page.results)
        token = page.next_page_token
        if not token:
            break
    assert seen == list(reversed(texts))
    with pytest.raises(QueryError):
        await bob.server.search(
            "other", conversation_id=group, page_size=3, page_token="nope", marks=("[", "]")
        )


async def test_a_search_where_nothing_is_in_scope_still_sends_one_request_of_the_shape() -> None:
    server, group, alice, bob, _carol = await trio()
    await turn_on(server, alice, group)
    await say(alice, group, "hello")
    calls = len(server.search_calls)
    assert await found(bob, "hello", conversation_id="not-a-searchable-conversation") == []
    [request] = server.search_calls[calls:]
    assert len(request.groups) == 4
    assert len(request.SerializeToString()) == 512
    with pytest.raises(QueryError):
        await found(bob, "hel*")


async def test_a_device_without_any_key_asks_nothing() -> None:
    server = BlindFakeServer()
    loner = await blind_device(server, "zed", "z1")
    assert await found(loner, "anything") == []
    assert server.search_calls == []
    assert isinstance(server.settings, search_pb2.SearchSettings)


async def test_a_key_that_arrives_before_the_first_scan_is_kept() -> None:
    server, group, alice, bob, _carol = await trio()
    await turn_on(server, alice, group)
    # Bob claims the key before his device ever read the conversation's history.
    await bob.groups.claim()
    [key] = bob.server.keys.all_keys()
    await say(bob, group, "indexed under alice's key")
    assert server.index_calls[-1].key_id == key.key_id
    assert bob.server.keys.all_keys() == [key]
    # Turning search off and on again forgets the old epoch's key only.
    server.set_server_search(group, "alice", False)
    seq = server.set_server_search(group, "alice", True)
    await alice.server.after_change(group, seq)
    await bob.groups.claim()
    await bob.server.sync(group)
    assert [k.epoch_seq for k in bob.server.keys.all_keys()] == [seq]


async def test_sends_where_search_is_off_read_no_history_and_a_stream_event_turns_it_on() -> None:
    server, group, alice, bob, _carol = await trio()
    await say(alice, group, "first")
    await say(bob, group, "second")
    pages = server.pages_served
    for i in range(5):
        await say(bob, group, f"bob off {i}")
        await say(alice, group, f"alice off {i}")
    assert server.pages_served == pages  # no history read per send
    assert server.index_calls == []
    # Bob turns it on; alice hears it on her stream and indexes her next send.
    seq = server.set_server_search(group, "bob", True)
    await bob.server.after_change(group, seq)
    await alice.server.on_system_message(SystemMessageEvent(server.messages[group][seq - 1]))
    await say(alice, group, "now indexed")
    assert len(server.index_calls) == 1
    assert await found(bob, "indexed") == ["now indexed"]
