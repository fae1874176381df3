"""The client's end-to-end encrypted messaging methods (a client connected with a store)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from parley.message.v1 import messages_pb2
from parley_sdk._e2ee_models import DecryptedMessage
from parley_sdk._paging import ClientBase
from parley_sdk._secure import E2EE

__all__ = ["NotEncryptedError", "SecureMethods"]


class NotEncryptedError(RuntimeError):
    """An end-to-end encryption method was called on a client connected without
    a store (``Client.connect(store=...)`` turns encryption on)."""

    def __init__(self) -> None:
        super().__init__("this client has no encryption store; connect with store=PATH")


class SecureMethods(ClientBase):
    """Encrypted text messages (docs/design/e2ee.md). Needs a client connected
    with ``store=``; otherwise each method raises :class:`NotEncryptedError`."""

    _e2ee: E2EE | None = None
    identity_changed_on_connect: bool = False
    """Whether the server held another identity key for this device when it
    connected (a re-install from saved credentials): every conversation of the
    account then got an IDENTITY_CHANGED system message."""

    @property
    def encrypted(self) -> bool:
        """Whether this client encrypts (it was connected with a store)."""
        return self._e2ee is not None

    def _require_e2ee(self) -> E2EE:
        if self._e2ee is None:
            raise NotEncryptedError()
        return self._e2ee

    async def send_text(
        self,
        conversation_id: str,
        text: str,
        *,
        reply_to_message_id: str = "",
        forwarded: bool = False,
    ) -> DecryptedMessage:
        """Sends ``text`` end-to-end encrypted; returns the stored message with it.

        Direct conversations: one pairwise copy for every device of the other
        member and every other device of this account. Groups: under this
        device's sender key, handed first to member devices that lack it.
        Channels are not end-to-end encrypted (any subscriber may read them):
        the text goes in the clear inside the envelope.

        Raises :class:`NoRecipientDevicesError` when no device of the other
        member of a direct conversation has published keys.
        """
        return await self._require_e2ee().send_text(
            conversation_id, text, reply_to_message_id=reply_to_message_id, forwarded=forwarded
        )

    async def edit_text(
        self, conversation_id: str, message_id: str, text: str
    ) -> messages_pb2.MessageEdited:
        """Replaces the text of one of this account's messages, encrypted like
        :meth:`send_text` (for the conversation's devices as of now)."""
        return await self._require_e2ee().edit_text(conversation_id, message_id, text)

    async def decrypt(self, message: messages_pb2.Message) -> DecryptedMessage:
        """The message with its text: from this device's store if it was read (or
        sent) before, else decrypted now. Never raises for undecryptable input:
        ``text`` is None and ``error`` says why."""
        return await self._require_e2ee().decrypt(message)

    def read_history(
        self, conversation_id: str, *, page_size: int | None = None
    ) -> AsyncIterator[DecryptedMessage]:
        """History newest first (like ``list_messages``), each message decrypted."""
        return self._require_e2ee().read_history(conversation_id, page_size=page_size)

    async def replenish_pre_keys(self) -> int:
        """Uploads one-time prekeys up to 100 when the server holds fewer than 20;
        returns how many it holds. Done by itself on connect and on the
        stream's PRE_KEYS_LOW notice."""
        return await self._require_e2ee().replenish()
