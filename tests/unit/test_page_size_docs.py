"""Every paged RPC's proto comment states the default and the maximum its
servicer applies, and that larger values are capped (AIP-158)."""

from __future__ import annotations

import re
from pathlib import Path

from svc_keys.servicer.accounts import DEVICES_PAGE_DEFAULT, DEVICES_PAGE_MAX
from svc_keys.servicer.keys import CLAIM_PAGE_DEFAULT, CLAIM_PAGE_MAX
from svc_media.servicer.admin import AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX
from svc_message.servicer.changes import (
    LIST_PAGE_DEFAULT,
    LIST_PAGE_MAX,
    RECEIPTS_PAGE_DEFAULT,
    RECEIPTS_PAGE_MAX,
)
from svc_message.servicer.groups import MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX
from svc_message.servicer.history_export import DEFAULT_PAGE as EXPORTS_PAGE_DEFAULT
from svc_message.servicer.history_export import MAX_PAGE as EXPORTS_PAGE_MAX
from svc_message.servicer.inbox import INBOX_PAGE_DEFAULT, INBOX_PAGE_MAX
from svc_message.servicer.messages import HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX
from svc_presence.servicer.presence import CONTACTS_PAGE_DEFAULT, CONTACTS_PAGE_MAX
from svc_search.servicer.search import PAGE_DEFAULT as SEARCH_PAGE_DEFAULT
from svc_search.servicer.search import PAGE_MAX as SEARCH_PAGE_MAX

PROTOS = Path(__file__).resolve().parents[2] / "protos" / "parley"

# Request message -> (default, maximum) as the servicer applies them.
APPLIED = {
    "ListDevicesRequest": (DEVICES_PAGE_DEFAULT, DEVICES_PAGE_MAX),
    "ClaimSenderKeysRequest": (CLAIM_PAGE_DEFAULT, CLAIM_PAGE_MAX),
    "ListConversationsRequest": (INBOX_PAGE_DEFAULT, INBOX_PAGE_MAX),
    "ListMembersRequest": (MEMBERS_PAGE_DEFAULT, MEMBERS_PAGE_MAX),
    "ListReactionsRequest": (LIST_PAGE_DEFAULT, LIST_PAGE_MAX),
    "ListMessageReceiptsRequest": (RECEIPTS_PAGE_DEFAULT, RECEIPTS_PAGE_MAX),
    "ListMessagesRequest": (HISTORY_PAGE_DEFAULT, HISTORY_PAGE_MAX),
    "ListContactsRequest": (CONTACTS_PAGE_DEFAULT, CONTACTS_PAGE_MAX),
    "ListAuditEventsRequest": (AUDIT_PAGE_DEFAULT, AUDIT_PAGE_MAX),
    "SearchRequest": (SEARCH_PAGE_DEFAULT, SEARCH_PAGE_MAX),
    "ListHistoryExportsRequest": (EXPORTS_PAGE_DEFAULT, EXPORTS_PAGE_MAX),
}

PROMISE = re.compile(
    r"1-(?P<range_max>\d+); 0 means (?P<default>\d+)\. "
    r"Larger values are treated as (?P<cap>\d+) \(AIP-158\); "
    r"a negative one is INVALID_ARGUMENT naming page_size\."
)


def documented_page_sizes() -> dict[str, str]:
    """Request message -> the comment above its page_size field, in every proto."""
    found: dict[str, str] = {}
    for proto in sorted(PROTOS.glob("*/v1/*.proto")):
        message = ""
        comment: list[str] = []
        for line in proto.read_text().splitlines():
            stripped = line.strip()
            if opened := re.match(r"message (\w+) \{", stripped):
                message = opened.group(1)
            if stripped.startswith("//"):
                comment.append(stripped.removeprefix("//").strip())
                continue
            if re.match(r"int32 page_size = \d+;", stripped):
                found[message] = " ".join(comment)
            comment = []
    return found


def test_every_paged_request_is_checked_here() -> None:
    assert sorted(documented_page_sizes()) == sorted(APPLIED)


def test_each_page_size_comment_states_what_the_servicer_applies() -> None:
    for message, comment in documented_page_sizes().items():
        promise = PROMISE.search(comment)
        assert promise is not None, f"{message}: {comment!r}"
        default, maximum = APPLIED[message]
        assert int(promise["default"]) == default, message
        assert int(promise["range_max"]) == int(promise["cap"]) == maximum, message
