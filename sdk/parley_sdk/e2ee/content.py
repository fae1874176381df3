"""The plaintext inside every ciphertext: a serialized e2ee Content, padded so
the ciphertext hides the exact length."""

from __future__ import annotations

from google.protobuf.message import DecodeError

from parley.e2ee.v1 import e2ee_pb2
from parley_sdk.e2ee.errors import DecryptionError

__all__ = [
    "PADDING_BLOCK",
    "attachment_content",
    "parse_content",
    "search_key_content",
    "sender_key_content",
    "text_content",
]

PADDING_BLOCK = 64
# Field 15, wire type 2 (length-delimited).
_PADDING_TAG_SIZE = 1


def _varint_size(value: int) -> int:
    size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


def _padded(content: e2ee_pb2.Content) -> bytes:
    content.ClearField("padding")
    size = content.ByteSize()
    if size % PADDING_BLOCK:
        # An empty bytes field is not serialized, so the padding field costs at
        # least tag + length + one byte; find the smallest that lands on a block.
        length = 1
        while (size + _PADDING_TAG_SIZE + _varint_size(length) + length) % PADDING_BLOCK:
            length += 1
        content.padding = b"\x00" * length
    return content.SerializeToString()


def text_content(text: str) -> bytes:
    """A serialized Content holding ``text``, padded to a multiple of 64 bytes."""
    return _padded(e2ee_pb2.Content(text=e2ee_pb2.Text(text=text)))


def attachment_content(attachment: e2ee_pb2.Attachment) -> bytes:
    """A serialized Content carrying a file's pointer (with its key), padded like text."""
    content = e2ee_pb2.Content()
    content.attachment.CopyFrom(attachment)
    return _padded(content)


def sender_key_content(distribution: bytes) -> bytes:
    """A serialized Content carrying a serialized SenderKeyDistribution (for the
    pairwise envelope each member device gets), padded like text."""
    try:
        parsed = e2ee_pb2.SenderKeyDistribution.FromString(distribution)
    except DecodeError:
        raise ValueError("not a SenderKeyDistribution") from None
    return _padded(e2ee_pb2.Content(sender_key=parsed))


def search_key_content(key: e2ee_pb2.SearchKey) -> bytes:
    """A serialized Content carrying a conversation's search key for one epoch
    (sealed pairwise like a sender key; never a chat message), padded like text."""
    content = e2ee_pb2.Content()
    content.search_key.CopyFrom(key)
    return _padded(content)


def parse_content(data: bytes) -> e2ee_pb2.Content:
    """DecryptionError if the bytes are not a Content with a known kind."""
    try:
        content = e2ee_pb2.Content.FromString(data)
    except DecodeError:
        raise DecryptionError("plaintext is not a Content") from None
    if content.WhichOneof("kind") is None:
        raise DecryptionError("Content of an unknown kind")
    return content
