"""Which RPC takes which abuse limit: the tests' copy of the table in
docs/ARCHITECTURE.md (Abuse limits), checked against it and against
parley_core.limits.LimitName by tests/chaos/test_limit_matrix.py.

The auth matrix and the fuzz tests use it to know which refusals an RPC may
answer with (RESOURCE_EXHAUSTED, reason RATE_LIMITED, naming one of these).
"""

from __future__ import annotations

import re
from pathlib import Path

LIMITS_BY_RPC: dict[str, frozenset[str]] = {
    rpc: frozenset(limits)
    for rpc, limits in {
        "SignUp": ("signup_per_address", "signup_overall"),
        "RefreshToken": ("refresh_per_address", "refresh_per_device"),
        "RegisterDevice": ("device_register_per_account",),
        "PublishKeys": ("key_upload_per_device",),
        "UploadPreKeys": ("key_upload_per_device",),
        "SendSenderKeys": ("sender_keys_per_device",),
        "GetPreKeyBundles": ("bundle_fetch_per_target", "bundle_fetch_per_requester"),
        "SendMessage": ("send_per_device", "send_per_account", "send_per_conversation"),
        "EditMessage": ("edit_per_account",),
        "DeleteMessage": ("delete_per_account",),
        "ReactToMessage": ("react_per_account",),
        "CreateDirectConversation": ("direct_create_per_account",),
        "CreateGroup": ("group_create_per_account",),
        "CreateChannel": ("group_create_per_account",),
        "AddMembers": ("add_members_per_account",),
        "UpdateConversationInfo": ("group_admin_per_account",),
        "SetServerSearch": ("group_admin_per_account",),
        "RemoveMember": ("group_admin_per_account",),
        "SetMemberRole": ("group_admin_per_account",),
        "SubscribeChannel": ("channel_subscribe_per_account",),
        "RegisterPushToken": ("push_token_per_device",),
        "RemovePushToken": ("push_token_per_device",),
        "AddContacts": ("contact_add_per_account",),
        "SubscribePresence": ("presence_subscribe_per_account",),
        "CreateUpload": ("media_upload_per_account",),
        "GetDownload": ("media_download_per_account",),
        "IndexMessage": ("search_index_per_account",),
        "RemoveMessage": ("search_index_per_account",),
        "Search": ("search_query_per_account",),
        "RestoreMedia": ("media_restore_per_account",),
    }.items()
}

ARCHITECTURE = Path(__file__).resolve().parents[1] / "docs" / "ARCHITECTURE.md"
_ROW = re.compile(r"^\| `(?P<limit>[a-z_]+)` \| [^|]* \| (?P<rpcs>[^|]*) \|")
_RPC = re.compile(r"\b[A-Z][A-Za-z]+\b")


def documented_limits(text: str | None = None) -> dict[str, frozenset[str]]:
    """limit name -> the RPCs the docs' Abuse limits table says take it."""
    text = ARCHITECTURE.read_text() if text is None else text
    section = text.split("### Abuse limits", 1)[1].split("\n### ", 1)[0]
    table: dict[str, frozenset[str]] = {}
    for line in section.splitlines():
        match = _ROW.match(line)
        if match is not None:
            # Parenthesised notes ("(same call)", "(groups, channels)") name no RPC.
            rpcs = re.sub(r"\([^)]*\)", "", match["rpcs"])
            table[match["limit"]] = frozenset(_RPC.findall(rpcs))
    return table


def limits_to_rpcs() -> dict[str, frozenset[str]]:
    """LIMITS_BY_RPC turned around: limit name -> the RPCs taking it."""
    result: dict[str, set[str]] = {}
    for rpc, limits in LIMITS_BY_RPC.items():
        for limit in limits:
            result.setdefault(limit, set()).add(rpc)
    return {limit: frozenset(rpcs) for limit, rpcs in result.items()}
