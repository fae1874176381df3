"""The upload of a file send's objects: sessions, parts, resume, completion.

Each step the server remembers is written to the device's store right after
it (:class:`UploadRecord`), so a process killed anywhere resumes: a session
already created is asked for again (GetUpload lists the stored parts and
signs fresh URLs for the rest), a part stored is never sent again, and a
session the server dropped (expired, aborted) is started over with the same
ciphertext. :func:`new_record` makes a send's record (keys, digests) from the
prepared file; :func:`ciphertexts_of` rebuilds any byte range of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from parley.media.v1 import media_pb2
from parley_sdk._file_sources import PreparedFile
from parley_sdk._media_models import ContentClass
from parley_sdk._session import Session
from parley_sdk._transfer import ObjectStore, UrlExpiredError
from parley_sdk._uploads import (
    MULTIPART_THRESHOLD,
    PART_SIZE,
    ObjectUpload,
    UploadRecord,
    content_class_of,
    part_size_for,
    part_slices,
)
from parley_sdk.e2ee import DeviceStore
from parley_sdk.e2ee.files import (
    FileCipher,
    ciphertext_size,
    digest_ciphertext,
    encrypt_bytes,
    encrypt_range,
)
from parley_sdk.errors import (
    AbortedError,
    DeadlineExceededError,
    InvalidArgumentError,
    MediaTransferError,
    ParleyError,
    UploadIncompleteError,
    UploadNotFoundError,
)
from parley_sdk.retry import new_request_id

__all__ = [
    "CiphertextAt",
    "ProgressCallback",
    "Uploader",
    "ciphertexts_of",
    "new_record",
    "session_expired",
    "source_unchanged",
]

CiphertextAt = Callable[[int, int], bytes]
"""``slice(start, end)``: the object's ciphertext bytes ``[start, end)``."""
ProgressCallback = Callable[[int, int], object]
"""Called with (ciphertext bytes stored so far, ciphertext bytes in all) as
parts are stored; a resumed send starts from what was stored before."""

# A session that keeps disappearing (expiring under a very slow client, or
# aborted by another device of the account) is started again this often.
_SESSION_TRIES = 3
_CUT_FIELDS = ("part_size", "part_sha256s")
# CompleteUpload reads the whole object back to verify it: give it time to,
# at the pace the media service plans for (its completion lease).
_COMPLETE_SECONDS = 120.0
_VERIFY_BYTES_PER_SECOND = 8 * 1024 * 1024


@dataclass(slots=True)
class _Tally:
    """Progress of one send, and what this call put on the wire."""

    done: int
    total: int
    sent: int
    report: ProgressCallback | None

    def stored(self, size: int, *, sent: bool) -> None:
        self.done += size
        if sent:
            self.sent += size
        if self.report is not None:
            self.report(min(self.done, self.total), self.total)


class Uploader:
    """Uploads the objects of :class:`UploadRecord` values, saving each step."""

    def __init__(
        self,
        session: Session,
        store: DeviceStore,
        objects: ObjectStore,
        *,
        part_concurrency: int = 3,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._store = store
        self._objects = objects
        self._concurrency = max(1, part_concurrency)
        self._clock = clock

    def save(self, record: UploadRecord) -> None:
        self._store.save_upload(
            record.request_id, record.conversation_id, record.to_json(), now=self._clock()
        )

    async def upload(
        self,
        record: UploadRecord,
        ciphertexts: dict[int, CiphertextAt],
        progress: ProgressCallback | None = None,
    ) -> int:
        """Completes every object of ``record`` (``ciphertexts`` by index in
        ``record.objects``); returns the bytes this call PUT."""
        tally = _Tally(record.stored_bytes(), record.total_bytes, 0, progress)
        for index, upload in enumerate(record.objects):
            if not upload.completed:
                await self._complete(record, upload, ciphertexts[index], tally)
        return tally.sent

    async def abort(self, record: UploadRecord) -> None:
        """Abandons the record's sessions (best effort: the server aborts
        expired ones by itself) and forgets the record."""
        for upload in record.objects:
            if upload.upload_id and not upload.completed:
                request = media_pb2.AbortUploadRequest(upload_id=upload.upload_id)
                # Expired, gone, or the service is away: its sweeper cleans up.
                with contextlib.suppress(ParleyError):
                    await self._session.unary(self._session.media.AbortUpload, request)
        self._store.delete_upload(record.request_id)

    async def _complete(
        self, record: UploadRecord, upload: ObjectUpload, ciphertext: CiphertextAt, tally: _Tally
    ) -> None:
        for _ in range(_SESSION_TRIES):
            session = await self._session_for(record, upload)
            if session is None:  # already stored: nothing to send
                tally.stored(upload.size - self._known_stored(upload), sent=False)
                return
            try:
                await self._send(record, upload, session, ciphertext, tally)
                request = media_pb2.CompleteUploadRequest(upload_id=upload.upload_id)
                media = await self._session.unary(
                    self._session.media.CompleteUpload,
                    request,
                    min_timeout=_COMPLETE_SECONDS + upload.size / _VERIFY_BYTES_PER_SECOND,
                )
            except UploadNotFoundError:
                self._restart(record, upload)
                continue
            except UploadIncompleteError:
                continue  # GetUpload says which parts are missing
            except (DeadlineExceededError, AbortedError):
                # Still verifying (a completion is idempotent): ask again; a
                # finished session then answers CreateUpload with the media.
                continue
            upload.media_id = media.media_id or upload.media_id
            upload.completed = True
            self.save(record)
            return
        raise MediaTransferError("the upload session kept failing; try again later")

    async def _session_for(
        self, record: UploadRecord, upload: ObjectUpload
    ) -> media_pb2.Upload | None:
        """The server's session for ``upload`` (created now, or the one the record
        names), or None when the server already stores this ciphertext."""
        if upload.upload_id:
            request = media_pb2.GetUploadRequest(upload_id=upload.upload_id)
            try:
                return await self._session.unary(self._session.media.GetUpload, request)
            except UploadNotFoundError:
                self._restart(record, upload)
        flipped = False
        while True:
            try:
                response = await self._session.unary(
                    self._session.media.CreateUpload, _create_request(upload)
                )
                break
            except InvalidArgumentError as error:
                # The deployment's multipart threshold is not the default: cut
                # (or stop cutting) the ciphertext as it says, once.
                if flipped or not any(f in _CUT_FIELDS for f, _ in error.field_violations):
                    raise
                flipped = True
                upload.restart(new_request_id(), multipart=not upload.multipart)
                self.save(record)
        if response.WhichOneof("result") == "already_stored":
            upload.media_id = response.already_stored.media_id
            upload.completed = True
            self.save(record)
            return None
        session = response.upload
        upload.upload_id = session.upload_id
        upload.media_id = session.media_id
        upload.multipart = not session.HasField("put")
        if session.HasField("expire_time"):
            upload.expire_time = float(session.expire_time.ToSeconds())
        self.save(record)
        return session

    def _restart(self, record: UploadRecord, upload: ObjectUpload) -> None:
        upload.restart(new_request_id())
        self.save(record)

    @staticmethod
    def _known_stored(upload: ObjectUpload) -> int:
        if not upload.multipart or not upload.part_size:
            return 0
        slices = part_slices(upload.size, upload.part_size)
        return sum(s.size for s in slices if s.number in upload.stored_parts)

    async def _send(
        self,
        record: UploadRecord,
        upload: ObjectUpload,
        session: media_pb2.Upload,
        ciphertext: CiphertextAt,
        tally: _Tally,
    ) -> None:
        if session.HasField("put"):
            body = await asyncio.to_thread(ciphertext, 0, upload.size)
            await self._put(upload, body, session.put, part_number=None)
            tally.stored(upload.size, sent=True)
            return
        part_size = session.part_size or upload.part_size
        slices = {s.number: s for s in part_slices(upload.size, part_size)}
        before = self._known_stored(upload)
        upload.part_size = part_size
        upload.stored_parts = {p.part_number for p in session.parts if p.stored}
        self.save(record)
        # The server's word on stored parts wins over the record's.
        tally.stored(self._known_stored(upload) - before, sent=False)
        missing = [p for p in session.parts if not p.stored]
        gate = asyncio.Semaphore(self._concurrency)

        async def send_part(part: media_pb2.UploadPart) -> None:
            where = slices.get(part.part_number)
            if where is None or (part.size and part.size != where.size):
                raise MediaTransferError(f"the server cut part {part.part_number} unexpectedly")
            async with gate:
                body = await asyncio.to_thread(ciphertext, where.start, where.end)
                await self._put(upload, body, part.request, part_number=part.part_number)
            upload.stored_parts.add(part.part_number)
            self.save(record)
            tally.stored(where.size, sent=True)

        await _all_or_first_error([send_part(part) for part in missing])

    async def _put(
        self,
        upload: ObjectUpload,
        body: bytes,
        request: media_pb2.PresignedRequest,
        *,
        part_number: int | None,
    ) -> None:
        try:
            await self._objects.put(request, body)
        except UrlExpiredError:
            # Signed URLs are short-lived: a slow part outlives its URL. Ask for
            # fresh ones once; a second refusal is not about time.
            fresh = await self._session.unary(
                self._session.media.GetUpload,
                media_pb2.GetUploadRequest(upload_id=upload.upload_id),
            )
            renewed = fresh.put if part_number is None else _part_request(fresh, part_number)
            if renewed is None:
                return  # stored meanwhile
            await self._objects.put(renewed, body)


async def _all_or_first_error(jobs: list[Coroutine[Any, Any, None]]) -> None:
    """Runs ``jobs`` together; on the first failure cancels the rest and raises it
    as it is (not wrapped in an ExceptionGroup, so callers catch the SDK's errors)."""
    tasks = [asyncio.ensure_future(job) for job in jobs]
    if not tasks:
        return
    try:
        _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled():
            error = task.exception()
            if error is not None:
                raise error


def _part_request(session: media_pb2.Upload, number: int) -> media_pb2.PresignedRequest | None:
    for part in session.parts:
        if part.part_number == number:
            return None if part.stored else part.request
    raise MediaTransferError(f"the upload session has no part {number}")


def _create_request(upload: ObjectUpload) -> media_pb2.CreateUploadRequest:
    request = media_pb2.CreateUploadRequest(
        request_id=upload.create_request_id,
        size=upload.size,
        sha256=upload.sha256,
        content_class=media_pb2.ContentClass.ValueType(int(upload.content_class)),
    )
    if upload.multipart:
        request.part_size = upload.part_size
        request.part_sha256s.extend(upload.part_sha256s)
    return request


def new_record(
    prepared: PreparedFile,
    *,
    request_id: str,
    conversation_id: str,
    requested: tuple[str | None, str | None],
    caption: str,
) -> UploadRecord:
    """A record with fresh keys and the digests of one encryption pass (blocking)."""
    cipher = FileCipher.generate()
    part_size = part_size_for(ciphertext_size(prepared.plaintext_size))
    digest = digest_ciphertext(
        cipher, prepared.read_at, prepared.plaintext_size, part_size=part_size
    )
    main = ObjectUpload(
        cipher=cipher,
        plaintext_size=prepared.plaintext_size,
        size=digest.size,
        sha256=digest.sha256,
        content_class=content_class_of(prepared.content_type),
        create_request_id=new_request_id(),
        multipart=digest.size > MULTIPART_THRESHOLD,
        part_size=part_size,
        part_sha256s=digest.part_sha256s,
    )
    record = UploadRecord(
        request_id=request_id,
        conversation_id=conversation_id,
        source=prepared.identity,
        requested_content_type=requested[0],
        requested_file_name=requested[1],
        caption=caption,
        content_type=prepared.content_type,
        file_name=prepared.file_name,
        main=main,
        started_at=time.time(),
    )
    image = prepared.image
    if image is not None:
        record.width, record.height, record.blurhash = image.width, image.height, image.blurhash
        if image.thumbnail is not None:
            thumbnail_cipher = FileCipher.generate()
            sealed = encrypt_bytes(thumbnail_cipher, image.thumbnail)
            record.thumbnail = ObjectUpload(
                cipher=thumbnail_cipher,
                plaintext_size=len(image.thumbnail),
                size=len(sealed),
                sha256=hashlib.sha256(sealed).digest(),
                content_class=ContentClass.THUMBNAIL,
                create_request_id=new_request_id(),
                multipart=False,
                part_size=PART_SIZE,
            )
            record.thumbnail_ciphertext = sealed
            record.thumbnail_width = image.thumbnail_width
            record.thumbnail_height = image.thumbnail_height
    return record


def ciphertexts_of(record: UploadRecord, prepared: PreparedFile) -> dict[int, CiphertextAt]:
    """How to rebuild each object's ciphertext, by its index in ``record.objects``."""
    cipher, size = record.main.cipher, prepared.plaintext_size

    def main(start: int, end: int) -> bytes:
        return encrypt_range(cipher, prepared.read_at, size, start, end)

    def preview(start: int, end: int) -> bytes:
        return record.thumbnail_ciphertext[start:end]

    return {0: main} if record.thumbnail is None else {0: preview, 1: main}


def session_expired(record: UploadRecord) -> bool:
    expiries = [o.expire_time for o in record.objects if o.expire_time is not None]
    return bool(expiries) and max(expiries) < time.time()


def source_unchanged(path: str, record: UploadRecord) -> bool:
    try:
        stat = os.stat(path)
    except OSError:
        return False
    return (stat.st_size, stat.st_mtime_ns) == (record.source.size, record.source.mtime_ns)
