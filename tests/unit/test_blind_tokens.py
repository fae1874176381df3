"""The pure parts of the SDK's server blind index: epoch keys and tokens, the
token length formula, query plans, the fixed request shape and padding, the
check that drops false positives, and who makes an epoch's key."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest

from parley.message.v1 import messages_pb2 as pb
from parley.search.v1 import search_pb2
from parley_sdk import QueryError, Role
from parley_sdk._blind_query import (
    build_requests,
    pad_request,
    plan_query,
    real_group,
    request_bucket,
    text_matches,
)
from parley_sdk._blind_tokens import (
    BlindSettings,
    EpochKey,
    derive_key_id,
    filler_tokens,
    message_tokens,
    term_token,
    token_bytes_for,
)
from parley_sdk._search_keys import Epoch, designated_creator, epoch_of
from parley_sdk.search_text import document_terms, parse_query

SETTINGS = BlindSettings(
    groups_per_query=4,
    tokens_per_group=4,
    min_token_bytes=4,
    max_token_bytes=32,
    max_tokens_per_message=256,
)
CONVERSATION = "0b9e2f64-31c4-4a43-9d0e-6f1c2b3a4d5e"
OTHER = "7d1f0c22-5b6a-4e2f-8a9b-0c1d2e3f4a5b"


def key(conversation_id: str = CONVERSATION, epoch: int = 3, seed: int = 1) -> EpochKey:
    return EpochKey(conversation_id, epoch, random.Random(seed).randbytes(32), 5)


def test_the_key_id_is_the_documented_hmac_and_reveals_nothing_else() -> None:
    k = key()
    expected = hmac.new(k.key, b"parley search key id", hashlib.sha256).digest()[:16]
    assert k.key_id == derive_key_id(k.key) == expected
    assert len(k.key_id) == 16
    assert key(seed=2).key_id != k.key_id


def test_the_same_word_has_different_tokens_in_other_conversations_and_epochs() -> None:
    here, there, later = key(seed=1), key(OTHER, seed=2), key(epoch=9, seed=3)
    tokens = {term_token(k, "lunch") for k in (here, there, later)}
    assert len(tokens) == 3
    assert all(len(t) == 5 for t in tokens)
    # Deterministic for one key: another member computes the same token.
    assert term_token(here, "lunch") == term_token(key(seed=1), "lunch")
    assert term_token(here, "lunch") != term_token(here, "dinner")


def test_message_tokens_are_its_terms_and_fillers_padded_to_a_bucket() -> None:
    k = key()
    text = "Lunch at the café with Müller"
    tokens = message_tokens(k, text, SETTINGS, random.Random(7))
    assert len(tokens) == 16 == len(set(tokens))
    for term in document_terms(text).all():
        assert term_token(k, term) in tokens
    assert set(filler_tokens(k, 3)) <= set(tokens)
    assert term_token(k, "café") not in tokens  # folded: "cafe"
    assert term_token(k, "cafe") in tokens
    assert term_token(k, "mueller") in tokens  # the umlaut spelled out too
    # Same text twice: the same real tokens, fresh padding.
    again = message_tokens(k, text, SETTINGS, random.Random(8))
    assert len(set(tokens) & set(again)) == len(document_terms(text).all()) + 3


def test_long_messages_go_to_larger_buckets_up_to_the_cap() -> None:
    k = key()
    words = " ".join(f"word{i}" for i in range(40))
    assert len(message_tokens(k, words, SETTINGS, random.Random(1))) == 64
    many = " ".join(f"w{i}" for i in range(1000))
    capped = message_tokens(k, many, SETTINGS, random.Random(1))
    assert len(capped) == 256
    assert term_token(k, "w0") in capped  # the first words are kept


def test_token_length_follows_the_false_positive_formula() -> None:
    # L = ceil(log2(N * T / f) / 8): N = 10k (the floor), T = 64, f = 0.01.
    assert token_bytes_for(0, SETTINGS) == 4  # log2(6.4e7) = 25.9 bits
    assert token_bytes_for(10_000_000, SETTINGS) == 5  # log2(6.4e10) = 35.9 bits
    assert token_bytes_for(10**12, SETTINGS) == 7  # log2(6.4e15) = 52.5 bits
    strict = token_bytes_for(10_000_000, SETTINGS, false_positives=1e-9)
    assert strict == 8  # log2(6.4e17) = 59.2 bits
    tight = BlindSettings(4, 4, 6, 6, 256)
    assert token_bytes_for(0, tight) == 6  # within the deployment's bounds


def test_a_query_plan_asks_for_every_spelling_and_refuses_prefixes() -> None:
    assert plan_query(parse_query("lunch friday"), 4) == (("friday", "lunch"),)
    # Müller: either spelling, so a group each.
    assert set(plan_query(parse_query("Müller"), 4)) == {("muller",), ("mueller",)}
    # l'arbre: the joined form, or its parts.
    assert set(plan_query(parse_query("l'arbre"), 4)) == {("larbre",), ("arbre", "l")}
    # A CJK run asks for its pairs and the characters between them; past
    # four terms the pairs go first.
    assert plan_query(parse_query("北京出"), 4) == (tuple(sorted(["北京", "京", "京出"])),)
    longer = plan_query(parse_query("北京出差"), 4)
    assert longer == (tuple(sorted(["北京", "京出", "出差", "京"])),)
    # Past the group size, the longest terms are asked; the rest is checked later.
    planned = plan_query(parse_query("a bb ccc dddd eeeee"), 4)
    assert planned == (("bb", "ccc", "dddd", "eeeee"),)
    with pytest.raises(QueryError):
        plan_query(parse_query("hel*"), 4)


def test_the_text_check_keeps_real_matches_and_drops_collisions() -> None:
    assert text_matches("Lunch at the Café?", parse_query("cafe lunch"))
    assert not text_matches("Lunch at the bar", parse_query("cafe lunch"))
    assert text_matches("sous l'arbre", parse_query("arbre"))
    assert text_matches("Herr Mueller", parse_query("Müller"))
    assert text_matches("明天去北京出差", parse_query("北京"))
    assert not text_matches("北方的京城", parse_query("北京"))
    assert text_matches("see you at noon", parse_query('"at noon"'))
    assert not text_matches("noon, see you at", parse_query('"at noon"'))


def test_requests_have_one_shape_and_size_whatever_the_query() -> None:
    keys = [key(seed=1), key(OTHER, epoch=5, seed=2)]
    one = [real_group(keys[0], ["lunch"], SETTINGS, random.Random(1))]
    three = [real_group(keys[0], ["lunch", "friday", "cafe"], SETTINGS, random.Random(2))]
    outcomes = []
    for real in (one, three, []):
        [request] = build_requests(real, keys, SETTINGS, random.Random(3))
        request.page_size = 20
        pad_request(request)
        outcomes.append(request)
        assert len(request.groups) == 4
        for group in request.groups:
            assert len(group.tokens) == 4 == len(set(group.tokens))
            assert {len(t) for t in group.tokens} == {5}
            assert len(group.key_id) == 16
            assert group.conversation_id in (CONVERSATION, OTHER)
    sizes = {len(r.SerializeToString()) for r in outcomes}
    assert sizes == {request_bucket(outcomes[0].ByteSize())} == {512}


def test_real_groups_hold_the_real_tokens_and_only_fillers_besides() -> None:
    k = key()
    group = real_group(k, ["lunch"], SETTINGS, random.Random(1))
    assert set(group.tokens) == {term_token(k, "lunch"), *filler_tokens(k, 3)}
    full = real_group(k, ["a", "b", "c", "d"], SETTINGS, random.Random(1))
    assert set(full.tokens) == {term_token(k, t) for t in "abcd"}


def test_more_real_groups_than_places_make_more_requests_of_the_same_shape() -> None:
    keys = [key(seed=s, epoch=s) for s in range(1, 7)]
    real = [real_group(k, ["lunch"], SETTINGS, random.Random(1)) for k in keys]
    requests = build_requests(real, keys, SETTINGS, random.Random(2))
    assert len(requests) == 2
    carried = [g for r in requests for g in r.groups if g in real]
    assert len(carried) == 6
    assert all(len(r.groups) == 4 for r in requests)


def test_padding_lands_exactly_on_the_bucket_at_every_size() -> None:
    for length in range(0, 2000, 7):
        request = search_pb2.SearchRequest(page_token="x" * length, page_size=20)
        padded = pad_request(request)
        size = len(padded.SerializeToString())
        assert size == request_bucket(size)
        assert size >= 512


def test_one_member_makes_an_epochs_key() -> None:
    members = [("dave", int(Role.MEMBER)), ("bob", int(Role.ADMIN)), ("carol", int(Role.ADMIN))]
    # The member who made the change.
    assert designated_creator(Epoch("c", 5, "dave", ()), members) == "dave"
    # They left: the lowest admin.
    gone = [m for m in members if m[0] != "dave"]
    assert designated_creator(Epoch("c", 5, "dave", ("dave",)), gone) == "bob"
    # No admin left: the lowest member.
    plain = [("zed", int(Role.MEMBER)), ("amy", int(Role.MEMBER))]
    assert designated_creator(Epoch("c", 5, "owner", ("owner",)), plain) == "amy"
    assert designated_creator(Epoch("c", 5, "x", ("x",)), []) is None


def test_system_messages_start_epochs_and_switch_search() -> None:
    def system(action: int, **fields: object) -> pb.Message:
        return pb.Message(
            conversation_id="c",
            seq=4,
            system=pb.SystemEvent(action=action, actor_account_id="alice", **fields),  # type: ignore[arg-type]
        )

    on = epoch_of(system(pb.SystemEvent.ACTION_SEARCH_CHANGED, server_search=True))
    assert on == (Epoch("c", 4, "alice", ()), True)
    assert epoch_of(system(pb.SystemEvent.ACTION_SEARCH_CHANGED)) == (None, False)
    removed = epoch_of(system(pb.SystemEvent.ACTION_MEMBER_REMOVED, target_account_ids=["bob"]))
    assert removed == (Epoch("c", 4, "alice", ("bob",)), None)
    left = epoch_of(system(pb.SystemEvent.ACTION_MEMBER_LEFT))
    assert left == (Epoch("c", 4, "alice", ("alice",)), None)
    assert epoch_of(system(pb.SystemEvent.ACTION_INFO_CHANGED)) == (None, None)
    assert epoch_of(pb.Message(conversation_id="c", seq=4, body=b"x")) == (None, None)
