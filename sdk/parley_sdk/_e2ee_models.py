"""Values of the SDK's end-to-end encryption: key notices and decrypted messages."""

from __future__ import annotations

from dataclasses import dataclass

from parley.message.v1 import messages_pb2
from parley_sdk._media_models import Attachment
from parley_sdk._wire import WireEnum

__all__ = ["DecryptedMessage", "KeyNoticeEvent", "KeyNoticeKind"]


class KeyNoticeKind(WireEnum):
    """Values equal ``parley.message.v1.KeyNotice.Kind``."""

    UNSPECIFIED = 0
    PRE_KEYS_LOW = 1
    """This device holds fewer than 20 one-time prekeys (an encrypted client uploads more)."""
    GROUP_REKEY = 2
    """Members left a group: an encrypted client starts a new sender key for it."""
    SENDER_KEYS_WAITING = 3
    """Sender-key envelopes wait for this device (an encrypted client claims them)."""


@dataclass(frozen=True, slots=True)
class KeyNoticeEvent:
    """Something this device's end-to-end encryption had to act on.

    A client with a store has already acted when it yields the event:
    replenished prekeys, rotated its sender key, or claimed sender keys.
    Never part of the feed (no position, not replayed by version).
    """

    kind: KeyNoticeKind
    conversation_id: str = ""
    """GROUP_REKEY, SENDER_KEYS_WAITING: the group."""
    account_ids: tuple[str, ...] = ()
    """GROUP_REKEY: the accounts that left."""
    pre_key_count: int = 0
    """PRE_KEYS_LOW: the one-time prekeys the device held when the notice was sent."""
    device_id: str = ""
    """The device the notice is for; empty: every device of the account."""

    @classmethod
    def from_proto(cls, notice: messages_pb2.KeyNotice) -> KeyNoticeEvent:
        return cls(
            kind=KeyNoticeKind(notice.kind),
            conversation_id=notice.conversation_id,
            account_ids=tuple(notice.account_ids),
            pre_key_count=notice.pre_key_count,
            device_id=notice.device_id,
        )


@dataclass(frozen=True, slots=True)
class DecryptedMessage:
    """A message with its plaintext.

    ``text`` is None for system messages and deleted ones (``error`` None
    too), and for messages this device cannot read, when ``error`` says why.
    A message carrying a file has its ``attachment`` (download it with
    :meth:`Client.download`) and its caption as ``text`` ("" for none).
    """

    message: messages_pb2.Message
    text: str | None
    error: str | None = None
    attachment: Attachment | None = None

    @property
    def message_id(self) -> str:
        return self.message.message_id

    @property
    def conversation_id(self) -> str:
        return self.message.conversation_id

    @property
    def seq(self) -> int:
        return self.message.seq

    @property
    def sender_account_id(self) -> str:
        return self.message.sender_account_id

    @property
    def sender_device_id(self) -> str:
        return self.message.sender_device_id
