"""svc_search on the real stack: the server blind index end to end, with
tokens made as the SDK makes them (tests/search_world.py).

Index, AND queries, newest first, paging bound to its query; an edit
replaces postings; deletes for everyone never come back, deletes for one
member hide the hit from that member only; turning server search off
refuses indexing and finds nothing; outsiders and removed members find
nothing they may not read; no plaintext term anywhere in MongoDB or Redis;
request and response sizes do not depend on which tokens were real."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest_asyncio
from pymongo import AsyncMongoClient

from parley.keys.v1 import accounts_pb2_grpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley.search.v1 import search_pb2 as spb
from parley.search.v1 import search_pb2_grpc as sgrpc
from parley_dev.stack import LocalStack
from tests.search_world import (
    GROUPS,
    TOKENS,
    Epoch,
    Query,
    decoy_group,
    hits,
    index,
    real_group,
    request,
    send_opaque,
    set_search,
)
from tests.store_scan import scan_mongo, scan_redis
from tests.users import Device, all_messages, direct, error_fields, error_reason, rid, sign_up


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def search(stack: LocalStack) -> AsyncIterator[sgrpc.SearchServiceStub]:
    channel = grpc.aio.insecure_channel(stack.search_target)
    yield sgrpc.SearchServiceStub(channel)
    await channel.close()


async def failure(call: Any) -> grpc.aio.AioRpcError:
    try:
        reply = await call
    except grpc.aio.AioRpcError as error:
        return error
    raise AssertionError(f"the call succeeded: {reply!r:.300}")


async def postings_of(stack: LocalStack, message_id: str) -> int:
    client: AsyncMongoClient[Any] = AsyncMongoClient(stack.mongo_uri)
    try:
        buckets = client["parley"]["search_buckets"].find({"e.m": message_id}, {"e": 1})
        return sum([[e["m"] for e in b["e"]].count(message_id) async for b in buckets])
    finally:
        await client.close()


class Chat:
    """Alice and Bob in a direct conversation with server search on."""

    def __init__(self, alice: Device, bob: Device, conversation_id: str) -> None:
        self.alice, self.bob, self.id = alice, bob, conversation_id
        self.epoch = Epoch()

    def query(self, *terms: str) -> Query:
        return Query(self.id, self.epoch, terms)


@pytest_asyncio.fixture(loop_scope="session")
async def chat(
    keys: accounts_pb2_grpc.AccountServiceStub, messages: mgrpc.MessageServiceStub
) -> Chat:
    alice, bob = await sign_up(keys), await sign_up(keys)
    conversation_id = await direct(messages, alice, bob)
    await set_search(messages, bob, conversation_id, True)
    return Chat(alice, bob, conversation_id)


async def test_setting_is_a_system_message_and_off_by_default(
    keys: accounts_pb2_grpc.AccountServiceStub, messages: mgrpc.MessageServiceStub
) -> None:
    alice, bob, carol = await sign_up(keys), await sign_up(keys), await sign_up(keys)
    conversation_id = await direct(messages, alice, bob)
    view = await messages.GetConversation(
        mpb.GetConversationRequest(conversation_id=conversation_id), metadata=alice.md
    )
    assert not view.conversation.server_search
    request_id = rid()
    on = mpb.SetServerSearchRequest(
        request_id=request_id, conversation_id=conversation_id, enabled=True
    )
    first = await messages.SetServerSearch(on, metadata=bob.md)
    again = await messages.SetServerSearch(on, metadata=bob.md)
    assert first.conversation.server_search and again.conversation.server_search
    history = await all_messages(messages, alice, conversation_id)
    changes = [m for m in history if m.system.action == mpb.SystemEvent.ACTION_SEARCH_CHANGED]
    assert len(changes) == 1, "a retry writes no second system message"
    assert changes[0].system.server_search and changes[0].system.actor_account_id == bob.account_id
    # Setting the current value changes nothing.
    await set_search(messages, alice, conversation_id, True)
    assert len(await all_messages(messages, alice, conversation_id)) == len(history)
    off = await set_search(messages, alice, conversation_id, False)
    assert not off.conversation.server_search
    # A late retry of the first request does not turn it back on.
    late = await messages.SetServerSearch(on, metadata=bob.md)
    assert not late.conversation.server_search
    last = (await all_messages(messages, bob, conversation_id))[-1]
    assert last.system.action == mpb.SystemEvent.ACTION_SEARCH_CHANGED
    assert not last.system.server_search

    # Groups: admins only.
    group = await messages.CreateGroup(
        mpb.CreateGroupRequest(request_id=rid(), title="g", member_account_ids=[bob.account_id]),
        metadata=alice.md,
    )
    group_id = group.conversation.conversation_id
    refused = await failure(set_search(messages, bob, group_id, True))
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    outsider = await failure(set_search(messages, carol, group_id, True))
    assert outsider.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND)
    assert (await set_search(messages, alice, group_id, True)).conversation.server_search
    bad = await failure(
        messages.SetServerSearch(
            mpb.SetServerSearchRequest(request_id="nope", conversation_id="x"), metadata=alice.md
        )
    )
    assert bad.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert {"request_id", "conversation_id"} <= set(error_fields(bad))


async def test_index_and_query_and_pages(
    stack: LocalStack,
    chat: Chat,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    settings = await search.GetSearchSettings(spb.GetSearchSettingsRequest(), metadata=chat.bob.md)
    assert (settings.groups_per_query, settings.tokens_per_group) == (GROUPS, TOKENS)
    words = [
        ("apple", "pie", "recipe"),
        ("apple", "tart"),
        ("apple", "pie"),
        ("cherry", "pie"),
        ("apple", "pie", "crumble"),
    ]
    sent = []
    for i, terms in enumerate(words):
        sender = chat.alice if i % 2 == 0 else chat.bob
        message = await send_opaque(messages, sender, chat.id)
        assert await index(search, sender, chat.id, message.message_id, chat.epoch, terms) == len(
            terms
        )
        sent.append(message.message_id)
    newest_first = list(reversed(sent))
    assert await hits(search, chat.bob, [chat.query("apple")]) == [
        m for m, terms in zip(newest_first, reversed(words), strict=True) if "apple" in terms
    ]
    assert await hits(search, chat.alice, [chat.query("apple", "pie")]) == [
        sent[4],
        sent[2],
        sent[0],
    ]
    assert await hits(search, chat.alice, [chat.query("pie", "tart")]) == []
    # Page by page gives the same list.
    assert await hits(search, chat.bob, [chat.query("pie")], page_size=1) == [
        sent[4],
        sent[3],
        sent[2],
        sent[0],
    ]
    # Two groups: both AND queries' hits, merged newest first.
    both = await search.Search(
        request([chat.query("cherry"), chat.query("tart")]), metadata=chat.bob.md
    )
    assert [(h.message_id, h.group_index) for h in both.hits] == [(sent[3], 0), (sent[1], 1)]
    assert both.hits[0].seq > both.hits[1].seq and both.hits[0].send_time.seconds > 0
    # A page token belongs to its query.
    first = await search.Search(request([chat.query("pie")], page_size=1), metadata=chat.bob.md)
    assert first.next_page_token
    other = request([chat.query("apple")], page_size=1)
    other.page_token = first.next_page_token
    refused = await failure(search.Search(other, metadata=chat.bob.md))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(refused) == ["page_token"]

    # An edit replaces the message's postings.
    await index(search, chat.alice, chat.id, sent[4], chat.epoch, ["banana", "bread"])
    assert sent[4] not in await hits(search, chat.bob, [chat.query("apple")])
    assert await hits(search, chat.bob, [chat.query("banana", "bread")]) == [sent[4]]
    assert await postings_of(stack, sent[4]) == 2

    # A retried IndexMessage (same request id) after a later edit changes nothing.
    retried = spb.IndexMessageRequest(
        request_id=rid(),
        conversation_id=chat.id,
        message_id=sent[0],
        key_id=chat.epoch.key_id,
        tokens=chat.epoch.tokens(["kiwi"]),
    )
    assert (await search.IndexMessage(retried, metadata=chat.alice.md)).posting_count == 1
    await index(search, chat.alice, chat.id, sent[0], chat.epoch, ["mango", "lime", "fig"])
    again = await search.IndexMessage(retried, metadata=chat.alice.md)
    assert again.posting_count == 3  # what the message has now (the proto's promise)
    assert await hits(search, chat.bob, [chat.query("kiwi")]) == []
    assert await hits(search, chat.bob, [chat.query("mango", "fig")]) == [sent[0]]


async def test_an_edit_moves_the_message_between_buckets_once(
    stack: LocalStack,
    chat: Chat,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    """Indexing a message again (an edit, or a retry after a crash) leaves
    exactly its new tokens' postings: none twice, none of the old ones."""
    message = await send_opaque(messages, chat.alice, chat.id)
    await index(search, chat.alice, chat.id, message.message_id, chat.epoch, ["plum", "jam"])
    assert await postings_of(stack, message.message_id) == 2
    for _ in range(2):
        await index(
            search, chat.alice, chat.id, message.message_id, chat.epoch, ["plum", "cake", "tea"]
        )
        assert await postings_of(stack, message.message_id) == 3
    assert await hits(search, chat.bob, [chat.query("plum", "jam")]) == []
    assert await hits(search, chat.bob, [chat.query("cake", "plum")]) == [message.message_id]
    await search.RemoveMessage(
        spb.RemoveMessageRequest(conversation_id=chat.id, message_id=message.message_id),
        metadata=chat.alice.md,
    )
    assert await postings_of(stack, message.message_id) == 0
    assert await hits(search, chat.bob, [chat.query("plum")]) == []


async def test_deletes_and_the_setting(
    chat: Chat,
    stack: LocalStack,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    gone = await send_opaque(messages, chat.alice, chat.id)
    hidden = await send_opaque(messages, chat.alice, chat.id)
    kept = await send_opaque(messages, chat.alice, chat.id)
    for message in (gone, hidden, kept):
        await index(search, chat.alice, chat.id, message.message_id, chat.epoch, ["walnut"])
    await messages.DeleteMessage(
        mpb.DeleteMessageRequest(
            request_id=rid(),
            conversation_id=chat.id,
            message_id=gone.message_id,
            scope=mpb.DELETE_SCOPE_FOR_EVERYONE,
        ),
        metadata=chat.alice.md,
    )
    await messages.DeleteMessage(
        mpb.DeleteMessageRequest(
            request_id=rid(),
            conversation_id=chat.id,
            message_id=hidden.message_id,
            scope=mpb.DELETE_SCOPE_FOR_ME,
        ),
        metadata=chat.bob.md,
    )
    walnut = [chat.query("walnut")]
    assert await hits(search, chat.bob, walnut) == [kept.message_id]
    assert await hits(search, chat.alice, walnut) == [kept.message_id, hidden.message_id]
    # Seen deleted once, its postings are gone for good.
    assert await postings_of(stack, gone.message_id) == 0
    refused = await failure(
        index(search, chat.alice, chat.id, gone.message_id, chat.epoch, ["walnut"])
    )
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert await hits(search, chat.alice, walnut) == [kept.message_id, hidden.message_id]

    # Only the sender indexes or removes a message's postings.
    not_sender = await failure(
        index(search, chat.bob, chat.id, kept.message_id, chat.epoch, ["walnut"])
    )
    assert not_sender.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(not_sender) == "ERROR_REASON_NOT_THE_SENDER"
    await search.RemoveMessage(
        spb.RemoveMessageRequest(conversation_id=chat.id, message_id=hidden.message_id),
        metadata=chat.alice.md,
    )
    assert await hits(search, chat.alice, walnut) == [kept.message_id]

    # Server search off: nothing found, nothing indexed, postings dropped.
    await set_search(messages, chat.bob, chat.id, False)
    assert await hits(search, chat.alice, walnut) == []
    disabled = await failure(
        index(search, chat.alice, chat.id, kept.message_id, chat.epoch, ["walnut"])
    )
    assert disabled.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(disabled) == "ERROR_REASON_SEARCH_DISABLED"
    assert await postings_of(stack, kept.message_id) == 0
    # On again: the old postings stay gone until the SDK indexes again.
    await set_search(messages, chat.bob, chat.id, True)
    assert await hits(search, chat.alice, walnut) == []


async def test_outsiders_and_removed_members_find_nothing_new(
    keys: accounts_pb2_grpc.AccountServiceStub,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    alice, bob, carol, mallory = [await sign_up(keys) for _ in range(4)]
    group = await messages.CreateGroup(
        mpb.CreateGroupRequest(
            request_id=rid(),
            title="trip",
            member_account_ids=[bob.account_id, carol.account_id],
        ),
        metadata=alice.md,
    )
    group_id = group.conversation.conversation_id
    await set_search(messages, alice, group_id, True)
    epoch = Epoch()
    before = await send_opaque(messages, alice, group_id)
    await index(search, alice, group_id, before.message_id, epoch, ["lisbon"])
    query = [Query(group_id, epoch, ("lisbon",))]
    assert await hits(search, carol, query) == [before.message_id]
    # Mallory holds the key (leaked) but is no member: nothing, and no page token.
    outsider = await search.Search(request(query), metadata=mallory.md)
    assert list(outsider.hits) == [] and not outsider.next_page_token
    member_empty = await search.Search(
        request([Query(group_id, epoch, ("nowhere",))]), metadata=carol.md
    )
    assert outsider.ByteSize() == member_empty.ByteSize()

    await messages.RemoveMember(
        mpb.RemoveMemberRequest(
            request_id=rid(), conversation_id=group_id, account_id=carol.account_id
        ),
        metadata=alice.md,
    )
    # Even with the old epoch's key, what was written after her removal is not hers.
    after = await send_opaque(messages, bob, group_id)
    await index(search, bob, group_id, after.message_id, epoch, ["lisbon"])
    assert await hits(search, bob, query) == [after.message_id, before.message_id]
    assert await hits(search, carol, query) == [before.message_id]


async def test_no_plaintext_term_in_any_store(
    stack: LocalStack,
    chat: Chat,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    terms = [f"zq{uuid.uuid4().hex[:12]}" for _ in range(3)]
    message = await send_opaque(messages, chat.alice, chat.id)
    await index(search, chat.alice, chat.id, message.message_id, chat.epoch, terms)
    assert await hits(search, chat.bob, [chat.query(*terms)]) == [message.message_id]
    needles = [t.encode() for t in terms]
    tokens = chat.epoch.tokens(terms)
    # The positive control: the same scans find the tokens the server keeps.
    mongo = await scan_mongo(stack, [*needles, *tokens])
    assert {h.needle for h in mongo} == set(tokens)
    assert {h.where for h in mongo} >= {"parley.search_buckets", "parley.search_tokens"}
    redis = await scan_redis(stack, [*needles, message.message_id.encode()])
    assert {h.needle for h in redis} <= {message.message_id.encode()}
    assert [h for h in mongo + redis if h.needle in needles] == []


async def test_sizes_do_not_depend_on_which_tokens_are_real(
    chat: Chat,
    messages: mgrpc.MessageServiceStub,
    search: sgrpc.SearchServiceStub,
) -> None:
    for terms in (["fig"], ["fig", "jam"], ["date"]):
        message = await send_opaque(messages, chat.alice, chat.id)
        await index(search, chat.alice, chat.id, message.message_id, chat.epoch, terms)
    all_real = request(
        [chat.query("fig"), chat.query("jam"), chat.query("date"), chat.query("fig")]
    )
    one_real = request([chat.query("fig", "jam")])
    all_decoys = spb.SearchRequest(groups=[decoy_group() for _ in range(GROUPS)])
    mixed = spb.SearchRequest(
        groups=[decoy_group(), real_group(chat.query("date")), decoy_group(), decoy_group()]
    )
    sizes = {r.ByteSize() for r in (all_real, one_real, all_decoys, mixed)}
    assert len(sizes) == 1, sizes
    replies = [
        await search.Search(r, metadata=chat.bob.md)
        for r in (all_real, one_real, all_decoys, mixed)
    ]
    assert [len(r.hits) for r in replies] == [6, 1, 0, 1]
    assert {r.ByteSize() for r in replies} == {1024}


async def test_shape_is_enforced(chat: Chat, search: sgrpc.SearchServiceStub) -> None:
    short = request([chat.query("fig")])
    del short.groups[-1]
    refused = await failure(search.Search(short, metadata=chat.bob.md))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error_fields(refused) == ["groups"]
    wide = request([chat.query("fig")])
    wide.groups[1].tokens.append(b"12345678")
    wide.groups[2].key_id = b"short"
    wide.groups[3].tokens[0] = b"abc"
    wide.page_size = -1
    refused = await failure(search.Search(wide, metadata=chat.bob.md))
    assert set(error_fields(refused)) == {
        "groups[1].tokens",
        "groups[2].key_id",
        "groups[3].tokens[0]",
        "page_size",
    }
    bad_index = await failure(
        search.IndexMessage(
            spb.IndexMessageRequest(
                request_id=rid(),
                conversation_id=chat.id,
                message_id=str(uuid.uuid4()),
                key_id=chat.epoch.key_id,
                tokens=[b"12345678", b"12345678", b"123456789"],
            ),
            metadata=chat.alice.md,
        )
    )
    assert bad_index.code() == grpc.StatusCode.INVALID_ARGUMENT
    unknown = await failure(
        index(search, chat.alice, chat.id, str(uuid.uuid4()), chat.epoch, ["fig"])
    )
    assert unknown.code() == grpc.StatusCode.NOT_FOUND
    no_token = await failure(search.Search(request([chat.query("fig")])))
    assert no_token.code() == grpc.StatusCode.UNAUTHENTICATED
