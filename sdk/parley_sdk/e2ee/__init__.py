"""End-to-end encryption core of the Parley SDK (network-free).

X3DH + Double Ratchet between devices, sender keys in groups, all state in one
SQLite file per device. Design and byte contract: docs/design/e2ee.md; wire
format: protos/parley/e2ee/v1/e2ee.proto.

>>> store = DeviceStore.open("alice-laptop.db")
>>> crypto = Crypto(store, DeviceAddress(account_id, device_id))
>>> keys = crypto.create_identity()          # then PublishKeys
>>> copies = await crypto.encrypt_pairwise(text_content("hi"), recipients, bundles)
"""

from parley_sdk.e2ee.content import (
    PADDING_BLOCK,
    attachment_content,
    parse_content,
    search_key_content,
    sender_key_content,
    text_content,
)
from parley_sdk.e2ee.engine import Crypto, HistoryEntry
from parley_sdk.e2ee.errors import (
    DecryptionError,
    InvalidBundleError,
    MissingSenderKeyError,
    UntrustedIdentityError,
)
from parley_sdk.e2ee.keys import (
    DeviceAddress,
    PublicKeys,
    PublicPreKey,
    PublicSignedPreKey,
    RemoteBundle,
)
from parley_sdk.e2ee.store import DeviceStore

__all__ = [
    "PADDING_BLOCK",
    "Crypto",
    "DecryptionError",
    "DeviceAddress",
    "DeviceStore",
    "HistoryEntry",
    "InvalidBundleError",
    "MissingSenderKeyError",
    "PublicKeys",
    "PublicPreKey",
    "PublicSignedPreKey",
    "RemoteBundle",
    "UntrustedIdentityError",
    "attachment_content",
    "parse_content",
    "search_key_content",
    "sender_key_content",
    "text_content",
]
