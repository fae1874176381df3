"""Encryption of files (attachments): a chunked AEAD, network-free.

Each file gets a fresh random 32-byte key. The ciphertext is a 9-byte header
(format version, 8-byte random nonce prefix) followed by the plaintext cut
into 64 KiB chunks, each sealed with AES-256-GCM:

    nonce(i) = prefix || i (4 bytes, big-endian)
    aad(i)   = header || 0x01 if chunk i is the last, else 0x00
    chunk(i) = AES-256-GCM(key, nonce(i), plaintext[i*64Ki : (i+1)*64Ki], aad(i))

(the STREAM construction, as in age and Tink's streaming AEAD). A flipped
byte fails chunk i's tag; a chunk moved elsewhere fails its nonce; a file cut
at a chunk boundary fails because the chunk now last was not sealed as last;
bytes appended after the last chunk make the real last chunk fail as not last.
:class:`FileDecryptor` releases a chunk's plaintext only once its tag checked,
so a reader learns of damage at the chunk where it is, before reading on.

Encryption is deterministic for a given key and prefix, which lets an
interrupted upload rebuild exactly the bytes it was sending from the file
itself (:func:`encrypt_range`) instead of keeping a copy of the ciphertext.
An empty file is one empty last chunk (its tag). Byte contract:
docs/design/e2ee.md, "Attachments".
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from parley_sdk.e2ee.errors import DecryptionError

__all__ = [
    "CHUNK_SIZE",
    "FORMAT_VERSION",
    "HEADER_SIZE",
    "KEY_SIZE",
    "SEALED_CHUNK_SIZE",
    "TAG_SIZE",
    "CiphertextDigest",
    "FileCipher",
    "FileDecryptionError",
    "FileDecryptor",
    "ReadAt",
    "chunk_count",
    "ciphertext_size",
    "decrypt_bytes",
    "digest_ciphertext",
    "encrypt_bytes",
    "encrypt_range",
    "iter_ciphertext",
]

FORMAT_VERSION = 1
KEY_SIZE = 32
PREFIX_SIZE = 8
HEADER_SIZE = 1 + PREFIX_SIZE
CHUNK_SIZE = 64 * 1024
"""Plaintext bytes per chunk (the last one may be shorter, even empty)."""
TAG_SIZE = 16
SEALED_CHUNK_SIZE = CHUNK_SIZE + TAG_SIZE
# The counter is 4 bytes: 2^32 chunks of 64 KiB (256 TiB) is far beyond any
# object the media service accepts.
_MAX_CHUNKS = 2**32

ReadAt = Callable[[int, int], bytes]
"""``read_at(offset, length)``: plaintext bytes of a file, ``length`` of them
unless the file ends first."""


class FileDecryptionError(DecryptionError):
    """An encrypted file does not open: damaged, truncated, reordered, extended,
    or not sealed with this key. ``chunk`` is the index of the chunk that
    failed (None when the header or the length is wrong)."""

    def __init__(self, message: str, *, chunk: int | None = None) -> None:
        super().__init__(message)
        self.chunk = chunk


def chunk_count(plaintext_size: int) -> int:
    """How many chunks seal ``plaintext_size`` bytes (at least one)."""
    if plaintext_size < 0:
        raise ValueError("a size is never negative")
    return max(1, -(-plaintext_size // CHUNK_SIZE))


def ciphertext_size(plaintext_size: int) -> int:
    """The exact ciphertext size of a file of ``plaintext_size`` bytes."""
    return HEADER_SIZE + plaintext_size + chunk_count(plaintext_size) * TAG_SIZE


@dataclass(frozen=True, slots=True)
class FileCipher:
    """A file's key and nonce prefix; ``repr`` hides both."""

    key: bytes = field(repr=False)
    nonce_prefix: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if len(self.key) != KEY_SIZE:
            raise ValueError(f"a file key is {KEY_SIZE} bytes")
        if len(self.nonce_prefix) != PREFIX_SIZE:
            raise ValueError(f"a nonce prefix is {PREFIX_SIZE} bytes")

    @classmethod
    def generate(cls) -> FileCipher:
        """A fresh random key and prefix: one per file, never reused."""
        return cls(os.urandom(KEY_SIZE), os.urandom(PREFIX_SIZE))

    @property
    def header(self) -> bytes:
        return bytes([FORMAT_VERSION]) + self.nonce_prefix

    def seal_chunk(self, index: int, plaintext: bytes, *, last: bool) -> bytes:
        if not 0 <= index < _MAX_CHUNKS:
            raise ValueError("chunk index out of range")
        if len(plaintext) > CHUNK_SIZE or (not last and len(plaintext) != CHUNK_SIZE):
            raise ValueError("only the last chunk may be shorter than CHUNK_SIZE")
        return AESGCM(self.key).encrypt(
            _nonce(self.nonce_prefix, index), plaintext, _aad(self.header, last=last)
        )


def _nonce(prefix: bytes, index: int) -> bytes:
    return prefix + struct.pack(">I", index)


def _aad(header: bytes, *, last: bool) -> bytes:
    return header + (b"\x01" if last else b"\x00")


def iter_ciphertext(cipher: FileCipher, read_at: ReadAt, plaintext_size: int) -> Iterator[bytes]:
    """The whole ciphertext, header first, one sealed chunk at a time."""
    yield cipher.header
    count = chunk_count(plaintext_size)
    for index in range(count):
        plaintext = _chunk_plaintext(read_at, index, plaintext_size)
        yield cipher.seal_chunk(index, plaintext, last=index == count - 1)


def _chunk_plaintext(read_at: ReadAt, index: int, plaintext_size: int) -> bytes:
    offset = index * CHUNK_SIZE
    length = min(CHUNK_SIZE, plaintext_size - offset)
    data = read_at(offset, length) if length > 0 else b""
    if len(data) != max(length, 0):
        raise ValueError("the file changed while it was being encrypted")
    return data


def encrypt_bytes(cipher: FileCipher, plaintext: bytes) -> bytes:
    """A whole (small) file's ciphertext."""
    view = memoryview(plaintext)
    return b"".join(iter_ciphertext(cipher, lambda o, n: bytes(view[o : o + n]), len(plaintext)))


def encrypt_range(
    cipher: FileCipher, read_at: ReadAt, plaintext_size: int, start: int, end: int
) -> bytes:
    """Ciphertext bytes ``[start, end)``, sealing only the chunks they overlap.

    Encryption is deterministic for a cipher, so these are exactly the bytes a
    full pass yields there: an upload part is rebuilt from the file alone.
    """
    total = ciphertext_size(plaintext_size)
    if not 0 <= start <= end <= total:
        raise ValueError(f"range [{start}, {end}) is outside the ciphertext (0-{total})")
    count = chunk_count(plaintext_size)
    pieces: list[bytes] = []
    if start < HEADER_SIZE:
        index, position = 0, 0  # where pieces[0] starts in the ciphertext
        pieces.append(cipher.header)
    else:
        index = (start - HEADER_SIZE) // SEALED_CHUNK_SIZE
        position = HEADER_SIZE + index * SEALED_CHUNK_SIZE
    covered = position + sum(len(p) for p in pieces)
    while covered < end and index < count:
        sealed = cipher.seal_chunk(
            index, _chunk_plaintext(read_at, index, plaintext_size), last=index == count - 1
        )
        pieces.append(sealed)
        covered += len(sealed)
        index += 1
    joined = b"".join(pieces)
    return joined[start - position : end - position]


@dataclass(frozen=True, slots=True)
class CiphertextDigest:
    """What an upload declares: the ciphertext's size and SHA-256, and the SHA-256
    of each ``part_size`` slice of it (the last one may be shorter)."""

    size: int
    sha256: bytes
    part_size: int
    part_sha256s: tuple[bytes, ...]


def digest_ciphertext(
    cipher: FileCipher, read_at: ReadAt, plaintext_size: int, *, part_size: int
) -> CiphertextDigest:
    """One encryption pass over the file, hashing what it would upload."""
    if part_size <= 0:
        raise ValueError("part_size must be positive")
    whole = hashlib.sha256()
    parts: list[bytes] = []
    part = hashlib.sha256()
    in_part = 0
    size = 0
    for piece in iter_ciphertext(cipher, read_at, plaintext_size):
        whole.update(piece)
        size += len(piece)
        view = memoryview(piece)
        while view:
            take = min(len(view), part_size - in_part)
            part.update(view[:take])
            in_part += take
            view = view[take:]
            if in_part == part_size:
                parts.append(part.digest())
                part, in_part = hashlib.sha256(), 0
    if in_part:
        parts.append(part.digest())
    return CiphertextDigest(size, whole.digest(), part_size, tuple(parts))


class FileDecryptor:
    """Opens a ciphertext fed in pieces of any size.

    :meth:`update` returns the plaintext of every chunk it could check so
    far; a chunk is checked once the first byte after it arrived (until then
    it might be the last one). :meth:`finalize` checks the last chunk. Any
    failure raises :class:`FileDecryptionError` naming the chunk, and the
    decryptor is then unusable. ``received`` counts the bytes fed in.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_SIZE:
            raise ValueError(f"a file key is {KEY_SIZE} bytes")
        self._aead = AESGCM(key)
        self._header: bytes | None = None
        self._buffer = bytearray()
        self._index = 0
        self._failed = False
        self._done = False
        self.received = 0

    @property
    def chunks_opened(self) -> int:
        return self._index

    def update(self, data: bytes) -> bytes:
        self._check_usable()
        self.received += len(data)
        self._buffer += data
        if self._header is None:
            if len(self._buffer) < HEADER_SIZE:
                return b""
            self._header = bytes(self._buffer[:HEADER_SIZE])
            del self._buffer[:HEADER_SIZE]
            if self._header[0] != FORMAT_VERSION:
                self._failed = True
                raise FileDecryptionError(f"unknown file format version {self._header[0]}")
        out = bytearray()
        # Strictly more than a sealed chunk: the chunk is then known not to be last.
        while len(self._buffer) > SEALED_CHUNK_SIZE:
            out += self._open(bytes(self._buffer[:SEALED_CHUNK_SIZE]), last=False)
            del self._buffer[:SEALED_CHUNK_SIZE]
        return bytes(out)

    def finalize(self) -> bytes:
        """The last chunk's plaintext, once it checked as the last one."""
        self._check_usable()
        if self._header is None:
            self._failed = True
            raise FileDecryptionError("the file is shorter than its header")
        if len(self._buffer) < TAG_SIZE:
            self._failed = True
            raise FileDecryptionError(
                f"the file is truncated: chunk {self._index} is incomplete", chunk=self._index
            )
        plaintext = self._open(bytes(self._buffer), last=True)
        self._buffer.clear()
        self._done = True
        return plaintext

    def _open(self, sealed: bytes, *, last: bool) -> bytes:
        assert self._header is not None
        if self._index >= _MAX_CHUNKS:
            self._failed = True
            raise FileDecryptionError("too many chunks", chunk=self._index)
        try:
            plaintext = self._aead.decrypt(
                _nonce(self._header[1:], self._index), sealed, _aad(self._header, last=last)
            )
        except InvalidTag:
            self._failed = True
            place = "the last chunk" if last else "a chunk followed by more"
            raise FileDecryptionError(
                f"chunk {self._index} does not authenticate as {place}: the file was "
                "changed, truncated, reordered or extended, or the key is wrong",
                chunk=self._index,
            ) from None
        self._index += 1
        return plaintext

    def _check_usable(self) -> None:
        if self._failed:
            raise FileDecryptionError("this decryptor already failed")
        if self._done:
            raise FileDecryptionError("this decryptor is finalized")


def decrypt_bytes(key: bytes, ciphertext: bytes) -> bytes:
    """A whole (small) file's plaintext."""
    decryptor = FileDecryptor(key)
    return decryptor.update(ciphertext) + decryptor.finalize()
