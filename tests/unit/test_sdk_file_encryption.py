"""The chunked AEAD of attachments (parley_sdk.e2ee.files): round trips, and
damage caught at the chunk where it is, before the rest is read."""

from __future__ import annotations

import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley_sdk.e2ee.files import (
    CHUNK_SIZE,
    HEADER_SIZE,
    SEALED_CHUNK_SIZE,
    TAG_SIZE,
    FileCipher,
    FileDecryptionError,
    FileDecryptor,
    ReadAt,
    chunk_count,
    ciphertext_size,
    decrypt_bytes,
    digest_ciphertext,
    encrypt_bytes,
    encrypt_range,
)

FEED = 4096


def read_from(data: bytes) -> ReadAt:
    return lambda offset, length: data[offset : offset + length]


def feed(decryptor: FileDecryptor, ciphertext: bytes, piece: int = FEED) -> bytes:
    """Feeds ``ciphertext`` in pieces as a download would; the plaintext released."""
    out = bytearray()
    for start in range(0, len(ciphertext), piece):
        out += decryptor.update(ciphertext[start : start + piece])
    out += decryptor.finalize()
    return bytes(out)


@pytest.mark.parametrize(
    "size", [0, 1, 100, CHUNK_SIZE - 1, CHUNK_SIZE, CHUNK_SIZE + 1, 3 * CHUNK_SIZE, 200_000]
)
def test_round_trip_at_every_boundary(size: int) -> None:
    plaintext = os.urandom(size)
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, plaintext)
    assert len(ciphertext) == ciphertext_size(size)
    assert len(ciphertext) == HEADER_SIZE + size + chunk_count(size) * TAG_SIZE
    assert decrypt_bytes(cipher.key, ciphertext) == plaintext
    # Any feeding pattern gives the same plaintext.
    assert feed(FileDecryptor(cipher.key), ciphertext, piece=1 if size < 300 else 7777) == plaintext


def test_a_fresh_key_and_prefix_every_time_and_deterministic_per_cipher() -> None:
    plaintext = b"same file" * 1000
    one, two = FileCipher.generate(), FileCipher.generate()
    assert one.key != two.key and one.nonce_prefix != two.nonce_prefix
    assert encrypt_bytes(one, plaintext) != encrypt_bytes(two, plaintext)
    assert encrypt_bytes(one, plaintext) == encrypt_bytes(one, plaintext)
    assert one.key.hex() not in repr(one)


@pytest.mark.parametrize("damaged_chunk", [0, 1, 4, 7])
def test_a_flipped_byte_in_chunk_k_fails_at_chunk_k_before_the_rest_is_read(
    damaged_chunk: int,
) -> None:
    chunks = 8
    plaintext = os.urandom(chunks * CHUNK_SIZE - 123)
    cipher = FileCipher.generate()
    ciphertext = bytearray(encrypt_bytes(cipher, plaintext))
    flip_at = HEADER_SIZE + damaged_chunk * SEALED_CHUNK_SIZE + 1000
    ciphertext[flip_at] ^= 0x01
    decryptor = FileDecryptor(cipher.key)
    released = bytearray()
    with pytest.raises(FileDecryptionError) as failure:
        feed_until_failure(decryptor, bytes(ciphertext), released)
    assert failure.value.chunk == damaged_chunk
    # Only the chunks before the damaged one were released...
    assert bytes(released) == plaintext[: damaged_chunk * CHUNK_SIZE]
    # ...and no more was read than the damaged chunk and one feed past it.
    read_limit = HEADER_SIZE + (damaged_chunk + 1) * SEALED_CHUNK_SIZE + FEED
    assert decryptor.received <= read_limit
    if damaged_chunk < chunks - 1:
        assert decryptor.received < len(ciphertext)


def feed_until_failure(decryptor: FileDecryptor, ciphertext: bytes, released: bytearray) -> None:
    for start in range(0, len(ciphertext), FEED):
        released += decryptor.update(ciphertext[start : start + FEED])
    released += decryptor.finalize()


def test_truncation_at_a_chunk_boundary_is_detected() -> None:
    plaintext = os.urandom(3 * CHUNK_SIZE + 10)
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, plaintext)
    cut = ciphertext[: HEADER_SIZE + 2 * SEALED_CHUNK_SIZE]
    decryptor = FileDecryptor(cipher.key)
    with pytest.raises(FileDecryptionError) as failure:
        feed(decryptor, cut)
    assert failure.value.chunk == 1, "the chunk now last was not sealed as the last one"


@pytest.mark.parametrize("cut", [1, TAG_SIZE - 1, 500])
def test_truncation_inside_a_chunk_or_the_header_is_detected(cut: int) -> None:
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, os.urandom(2 * CHUNK_SIZE + 600))
    with pytest.raises(FileDecryptionError):
        decrypt_bytes(cipher.key, ciphertext[:-cut])
    with pytest.raises(FileDecryptionError):
        decrypt_bytes(cipher.key, ciphertext[: HEADER_SIZE - 1])
    with pytest.raises(FileDecryptionError):
        decrypt_bytes(cipher.key, ciphertext[: HEADER_SIZE + TAG_SIZE - 1])


def test_an_empty_file_cannot_be_passed_off_as_a_longer_ones_prefix() -> None:
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, b"")
    assert len(ciphertext) == HEADER_SIZE + TAG_SIZE
    assert decrypt_bytes(cipher.key, ciphertext) == b""
    longer = encrypt_bytes(cipher, os.urandom(CHUNK_SIZE + 1))
    with pytest.raises(FileDecryptionError):
        decrypt_bytes(cipher.key, longer[:HEADER_SIZE])


def test_reordered_chunks_fail_at_the_first_moved_chunk() -> None:
    cipher = FileCipher.generate()
    plaintext = os.urandom(4 * CHUNK_SIZE)
    ciphertext = encrypt_bytes(cipher, plaintext)
    body = ciphertext[HEADER_SIZE:]
    sealed = [body[i : i + SEALED_CHUNK_SIZE] for i in range(0, len(body), SEALED_CHUNK_SIZE)]
    assert len(sealed) == 4
    swapped = ciphertext[:HEADER_SIZE] + sealed[0] + sealed[2] + sealed[1] + sealed[3]
    with pytest.raises(FileDecryptionError) as failure:
        decrypt_bytes(cipher.key, swapped)
    assert failure.value.chunk == 1


def test_extra_bytes_after_the_last_chunk_are_detected() -> None:
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, os.urandom(CHUNK_SIZE + 5))
    with pytest.raises(FileDecryptionError) as failure:
        decrypt_bytes(cipher.key, ciphertext + os.urandom(40))
    assert failure.value.chunk == 1


def test_a_wrong_key_fails_at_the_first_chunk() -> None:
    cipher = FileCipher.generate()
    ciphertext = encrypt_bytes(cipher, os.urandom(3 * CHUNK_SIZE))
    decryptor = FileDecryptor(FileCipher.generate().key)
    with pytest.raises(FileDecryptionError) as failure:
        feed(decryptor, ciphertext)
    assert failure.value.chunk == 0
    assert decryptor.received <= HEADER_SIZE + SEALED_CHUNK_SIZE + FEED
    # A failed decryptor stays failed.
    with pytest.raises(FileDecryptionError):
        decryptor.update(b"more")


def test_the_header_is_authenticated() -> None:
    cipher = FileCipher.generate()
    ciphertext = bytearray(encrypt_bytes(cipher, b"hello"))
    ciphertext[0] = 2
    with pytest.raises(FileDecryptionError, match="version"):
        decrypt_bytes(cipher.key, bytes(ciphertext))
    ciphertext[0] = 1
    ciphertext[3] ^= 0xFF  # the nonce prefix
    with pytest.raises(FileDecryptionError):
        decrypt_bytes(cipher.key, bytes(ciphertext))


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(min_value=0, max_value=3 * CHUNK_SIZE + 50),
    start=st.integers(min_value=0, max_value=4 * SEALED_CHUNK_SIZE),
    length=st.integers(min_value=0, max_value=2 * SEALED_CHUNK_SIZE),
)
def test_any_range_equals_the_same_slice_of_a_full_pass(size: int, start: int, length: int) -> None:
    plaintext = bytes(range(256)) * (size // 256) + bytes(size % 256)
    cipher = FileCipher(b"k" * 32, b"p" * 8)
    full = encrypt_bytes(cipher, plaintext)
    start = min(start, len(full))
    end = min(start + length, len(full))
    assert encrypt_range(cipher, read_from(plaintext), size, start, end) == full[start:end]


def test_digest_gives_the_whole_and_per_part_hashes() -> None:
    plaintext = os.urandom(5 * CHUNK_SIZE + 77)
    cipher = FileCipher.generate()
    full = encrypt_bytes(cipher, plaintext)
    part = 100_000
    digest = digest_ciphertext(cipher, read_from(plaintext), len(plaintext), part_size=part)
    assert digest.size == len(full)
    assert digest.sha256 == hashlib.sha256(full).digest()
    expected = [hashlib.sha256(full[i : i + part]).digest() for i in range(0, len(full), part)]
    assert list(digest.part_sha256s) == expected


def test_keys_and_prefixes_of_the_wrong_size_are_refused() -> None:
    with pytest.raises(ValueError, match="key"):
        FileCipher(b"short", b"p" * 8)
    with pytest.raises(ValueError, match="prefix"):
        FileCipher(b"k" * 32, b"p")
    with pytest.raises(ValueError, match="key"):
        FileDecryptor(b"short")


def test_a_file_that_shrinks_while_encrypted_is_refused() -> None:
    cipher = FileCipher.generate()
    with pytest.raises(ValueError, match="changed"):
        encrypt_range(cipher, read_from(b"abc"), CHUNK_SIZE, 0, 100)
