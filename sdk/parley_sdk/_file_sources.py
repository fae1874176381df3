"""What a file send reads: a path or bytes, its name and type, and for images
the cleaned-up version that is sent instead of the original.

The content type is the caller's, else guessed from the file name, else
sniffed: anything Pillow recognises as an image is treated as one, so a photo
handed over as bare bytes still loses its metadata. A caller that names a
non-image type explicitly (``application/octet-stream``) sends the file as it
is, as a document.
"""

from __future__ import annotations

import io
import mimetypes
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from parley_sdk._images import PreparedImage, prepare_image
from parley_sdk._uploads import SourceIdentity
from parley_sdk.e2ee.files import ReadAt

__all__ = ["FileSource", "PreparedFile", "prepare_file", "safe_file_name"]

FileSource = str | os.PathLike[str] | bytes | bytearray | memoryview
"""What :meth:`Client.send_file` sends: a path, or the file's bytes."""

DEFAULT_CONTENT_TYPE = "application/octet-stream"
_MAX_FILE_NAME = 255
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\]")


def safe_file_name(name: str) -> str:
    """A name without directories or control characters, at most 255 characters."""
    base = _UNSAFE.sub("_", name.replace("\\", "/").rsplit("/", 1)[-1]).strip()
    if base in (".", ".."):
        return ""
    return base[:_MAX_FILE_NAME]


@dataclass(slots=True)
class PreparedFile:
    """The bytes a send encrypts, read at any offset, and what describes them.
    Close it (it may hold the file open)."""

    identity: SourceIdentity
    content_type: str
    file_name: str
    plaintext_size: int
    read_at: ReadAt = field(repr=False)
    image: PreparedImage | None = None
    _fd: int | None = field(default=None, repr=False)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _from_memory(data: bytes) -> ReadAt:
    view = memoryview(data)
    return lambda offset, length: bytes(view[offset : offset + length])


def _is_image(path: Path | None, data: bytes | None) -> bool:
    """Whether Pillow recognises the format (it reads the header only)."""
    try:
        with Image.open(path if path is not None else io.BytesIO(data or b"")):
            return True
    except (UnidentifiedImageError, OSError, SyntaxError, Image.DecompressionBombError):
        return False


def prepare_file(
    source: FileSource, *, content_type: str | None, file_name: str | None
) -> PreparedFile:
    """Reads what ``source`` is (blocking: run it in a thread).

    ValueError for an empty or unreadable source, FileNotFoundError for a
    missing path.
    """
    path: Path | None = None
    data: bytes | None = None
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        identity = SourceIdentity(None, len(data), 0)
    else:
        path = Path(source).resolve()
        stat = path.stat()
        if not path.is_file():
            raise ValueError(f"{path} is not a regular file")
        identity = SourceIdentity(str(path), stat.st_size, stat.st_mtime_ns)
    name = safe_file_name(file_name if file_name is not None else (path.name if path else ""))
    guessed = mimetypes.guess_type(name)[0] if name else None
    kind = content_type or guessed or ""
    wants_image = kind.startswith("image/") or (not content_type and not guessed)
    if wants_image and _is_image(path, data):
        raw = data if data is not None else (path.read_bytes() if path else b"")
        prepared = prepare_image(raw)
        if prepared is not None:
            return PreparedFile(
                identity=identity,
                content_type=prepared.content_type,
                file_name=_with_extension(name, prepared.extension),
                plaintext_size=len(prepared.data),
                read_at=_from_memory(prepared.data),
                image=prepared,
            )
    final_type = content_type or guessed or DEFAULT_CONTENT_TYPE
    if data is not None:
        return PreparedFile(
            identity=identity,
            content_type=final_type,
            file_name=name,
            plaintext_size=len(data),
            read_at=_from_memory(data),
        )
    assert path is not None
    fd = os.open(path, os.O_RDONLY)
    return PreparedFile(
        identity=identity,
        content_type=final_type,
        file_name=name,
        plaintext_size=identity.size,
        read_at=lambda offset, length: os.pread(fd, length, offset),
        _fd=fd,
    )


_SAME_EXTENSIONS = {".jpg": {".jpg", ".jpeg", ".jpe"}}


def _with_extension(name: str, extension: str) -> str:
    """The name with the extension of what is sent, when re-encoding changed the format."""
    if not name:
        return ""
    stem, current = os.path.splitext(name)
    if current.lower() in _SAME_EXTENSIONS.get(extension, {extension}):
        return name
    return (stem or name) + extension
