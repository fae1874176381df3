"""The named abuse limits: one token bucket rate each, set in the ``limits``
section of the shared config (one key per name, ``limits.<name>.burst`` and
``limits.<name>.per_minute``). The table of what each keys on and why its
default is what it is lives in docs/ARCHITECTURE.md ("Abuse limits")."""

from __future__ import annotations

import enum


class LimitName(enum.StrEnum):
    # svc_keys: accounts, devices, tokens, keys.
    SIGNUP_PER_ADDRESS = "signup_per_address"
    SIGNUP_OVERALL = "signup_overall"
    REFRESH_PER_ADDRESS = "refresh_per_address"
    REFRESH_PER_DEVICE = "refresh_per_device"
    DEVICE_REGISTER_PER_ACCOUNT = "device_register_per_account"
    KEY_UPLOAD_PER_DEVICE = "key_upload_per_device"
    SENDER_KEYS_PER_DEVICE = "sender_keys_per_device"
    BUNDLE_FETCH_PER_TARGET = "bundle_fetch_per_target"
    BUNDLE_FETCH_PER_REQUESTER = "bundle_fetch_per_requester"
    # svc_message: conversations, messages, push.
    SEND_PER_DEVICE = "send_per_device"
    SEND_PER_ACCOUNT = "send_per_account"
    SEND_PER_CONVERSATION = "send_per_conversation"
    EDIT_PER_ACCOUNT = "edit_per_account"
    DELETE_PER_ACCOUNT = "delete_per_account"
    REACT_PER_ACCOUNT = "react_per_account"
    DIRECT_CREATE_PER_ACCOUNT = "direct_create_per_account"
    GROUP_CREATE_PER_ACCOUNT = "group_create_per_account"
    ADD_MEMBERS_PER_ACCOUNT = "add_members_per_account"
    GROUP_ADMIN_PER_ACCOUNT = "group_admin_per_account"
    CHANNEL_SUBSCRIBE_PER_ACCOUNT = "channel_subscribe_per_account"
    PUSH_TOKEN_PER_DEVICE = "push_token_per_device"
    # svc_presence.
    CONTACT_ADD_PER_ACCOUNT = "contact_add_per_account"
    PRESENCE_SUBSCRIBE_PER_ACCOUNT = "presence_subscribe_per_account"
    # svc_media.
    MEDIA_UPLOAD_PER_ACCOUNT = "media_upload_per_account"
    MEDIA_DOWNLOAD_PER_ACCOUNT = "media_download_per_account"
    # svc_search.
    SEARCH_INDEX_PER_ACCOUNT = "search_index_per_account"
    SEARCH_QUERY_PER_ACCOUNT = "search_query_per_account"
    MEDIA_RESTORE_PER_ACCOUNT = "media_restore_per_account"
