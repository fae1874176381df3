"""The client's file methods: send, download, forward, resume; restores and quotas.

A file is encrypted on this device with a fresh key (:mod:`parley_sdk.e2ee.files`),
uploaded to the media service's object store (:mod:`parley_sdk._media_upload`),
and announced by a message whose end-to-end encrypted content carries the
pointer with the key (:class:`Attachment`); the message names the media ids
so the server lets its readers download them. Design: docs/design/e2ee.md,
"Attachments"; usage: docs/sdk.md, "Files and media".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import os
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, overload

import httpx

from parley.media.v1 import media_pb2
from parley.message.v1 import messages_pb2
from parley_sdk._e2ee_models import DecryptedMessage
from parley_sdk._file_sources import FileSource, PreparedFile, prepare_file, safe_file_name
from parley_sdk._media_models import (
    Attachment,
    MediaQuota,
    PendingUpload,
    Restore,
    SentFile,
)
from parley_sdk._media_upload import (
    ProgressCallback,
    Uploader,
    ciphertexts_of,
    new_record,
    session_expired,
    source_unchanged,
)
from parley_sdk._secure import E2EE
from parley_sdk._secure_client import SecureMethods
from parley_sdk._transfer import ObjectStore
from parley_sdk._uploads import (
    PART_SIZE,
    UploadRecord,
    message_type_of,
)
from parley_sdk.e2ee import attachment_content
from parley_sdk.e2ee.files import (
    FileDecryptionError,
    FileDecryptor,
    digest_ciphertext,
)
from parley_sdk.errors import MediaNotFoundError
from parley_sdk.models import MessageEvent
from parley_sdk.retry import new_request_id

__all__ = ["FileSource", "MediaItem", "MediaMethods", "ProgressCallback"]

MediaItem = Attachment | SentFile | DecryptedMessage | MessageEvent | messages_pb2.Message
"""What carries a file: its pointer, or a message (sent, decrypted, or as stored)."""


class MediaMethods(SecureMethods):
    """Files: :meth:`send_file`, :meth:`download`, :meth:`forward`, resumable
    uploads, restores of archived media and quotas. Sending and reading files
    needs a client connected with a store (:class:`NotEncryptedError`
    otherwise), since the file keys travel inside encrypted messages."""

    _http_client: httpx.AsyncClient | None = None
    _object_store: ObjectStore | None = None

    @property
    def _objects(self) -> ObjectStore:
        if self._object_store is None:
            self._object_store = ObjectStore(
                self._session.retry_policy, http_client=self._http_client
            )
        return self._object_store

    async def _close_object_store(self) -> None:
        if self._object_store is not None:
            await self._object_store.close()

    def _uploader(self, e2ee: E2EE) -> Uploader:
        return Uploader(self._session, e2ee.store, self._objects)

    # -- sending ----------------------------------------------------------------

    async def send_file(
        self,
        conversation_id: str,
        source: FileSource,
        *,
        content_type: str | None = None,
        file_name: str | None = None,
        caption: str | None = None,
        request_id: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> SentFile:
        """Encrypts a file, uploads it and sends a message carrying it.

        ``source`` is a path or the file's bytes. ``content_type`` defaults to
        a guess from the file name, else what the bytes look like. Images
        (unless ``content_type`` names a non-image type) are re-encoded
        without their metadata (EXIF, GPS), get a thumbnail and a blurhash.
        ``progress(stored, total)`` follows the ciphertext bytes stored.

        Resumable: the upload's state is kept in the store under
        ``request_id`` (also the message's AIP-155 id). After a crash or a
        failure, call again with the same file and ``request_id`` (or
        :meth:`resume_uploads` for paths): parts already stored are not sent
        again. Raises :class:`QuotaExceededError`, :class:`TooManyUploadsError`,
        :class:`MediaTransferError` and the errors of :meth:`send_text`.
        """
        e2ee = self._require_e2ee()
        request_id = request_id or new_request_id()
        prepared = await asyncio.to_thread(
            prepare_file, source, content_type=content_type, file_name=file_name
        )
        uploader = self._uploader(e2ee)
        try:
            record = await self._record_for(
                uploader,
                e2ee,
                prepared,
                request_id=request_id,
                conversation_id=conversation_id,
                requested=(content_type, file_name),
                caption=caption or "",
            )
            ciphertexts = ciphertexts_of(record, prepared)
            uploaded = await uploader.upload(record, ciphertexts, progress)
            try:
                message = await _send_pointer(e2ee, record)
            except MediaNotFoundError:
                # Collected between completion and send (a send resumed after
                # the media's first check, say): upload it again, once.
                for upload in record.objects:
                    upload.restart(new_request_id())
                uploader.save(record)
                uploaded += await uploader.upload(record, ciphertexts, progress)
                message = await _send_pointer(e2ee, record)
        finally:
            prepared.close()
        attachment = record.attachment()
        e2ee.store.delete_upload(request_id)
        return SentFile(message, attachment, uploaded)

    async def _record_for(
        self,
        uploader: Uploader,
        e2ee: E2EE,
        prepared: PreparedFile,
        *,
        request_id: str,
        conversation_id: str,
        requested: tuple[str | None, str | None],
        caption: str,
    ) -> UploadRecord:
        """The saved record of this send when it is the same file, else a new one."""
        saved = _load_record(e2ee, request_id)
        if saved is not None:
            if saved.conversation_id != conversation_id:
                raise ValueError(
                    f"request_id {request_id} belongs to a file send to another conversation"
                )
            digest = await asyncio.to_thread(
                digest_ciphertext,
                saved.main.cipher,
                prepared.read_at,
                prepared.plaintext_size,
                part_size=saved.main.part_size or PART_SIZE,
            )
            if (digest.size, digest.sha256) == (saved.main.size, saved.main.sha256):
                saved.caption = caption
                uploader.save(saved)
                return saved
            # Another file under the same request id: the old upload is useless.
            await uploader.abort(saved)
        record = await asyncio.to_thread(
            new_record,
            prepared,
            request_id=request_id,
            conversation_id=conversation_id,
            requested=requested,
            caption=caption,
        )
        uploader.save(record)
        return record

    async def forward(
        self,
        item: MediaItem,
        to_conversation_id: str,
        *,
        caption: str | None = None,
        request_id: str | None = None,
    ) -> SentFile:
        """Sends a file again by reference: the same pointer (same media ids, same
        key) in a new message, marked forwarded. Nothing is uploaded
        (``uploaded_bytes`` is 0) and no quota of this account is charged.
        ``caption`` replaces the original one. The server refuses media this
        account may not read (:class:`MediaNotFoundError`)."""
        e2ee = self._require_e2ee()
        attachment = await self._attachment_of(item)
        if caption is not None:
            attachment = dataclasses.replace(attachment, caption=caption)
        message = await e2ee.send_content(
            to_conversation_id,
            attachment_content(attachment.to_proto()),
            type=message_type_of(attachment.content_type),
            forwarded=True,
            media_ids=attachment.media_ids,
            request_id=request_id or new_request_id(),
        )
        return SentFile(message, attachment, 0)

    # -- interrupted uploads ---------------------------------------------------------

    def pending_uploads(self) -> list[PendingUpload]:
        """File sends kept in the store because they did not finish, oldest first."""
        e2ee = self._require_e2ee()
        pending = []
        for text in e2ee.store.pending_uploads():
            try:
                record = UploadRecord.from_json(text)
            except ValueError:
                continue
            pending.append(
                PendingUpload(
                    request_id=record.request_id,
                    conversation_id=record.conversation_id,
                    file_name=record.file_name,
                    path=record.source.path,
                    total_bytes=record.total_bytes,
                    stored_bytes=record.stored_bytes(),
                    started_at=datetime.fromtimestamp(record.started_at, UTC),
                )
            )
        return pending

    async def resume_uploads(self, *, progress: ProgressCallback | None = None) -> list[SentFile]:
        """Finishes the interrupted file sends whose file is a path (see
        :meth:`send_file`); returns what they sent. A file that is gone or
        changed is discarded (its session aborted); sends of bytes stay
        pending until :meth:`send_file` is called with them again, or their
        session expired, when they are discarded."""
        e2ee = self._require_e2ee()
        uploader = self._uploader(e2ee)
        sent = []
        for text in e2ee.store.pending_uploads():
            try:
                record = UploadRecord.from_json(text)
            except ValueError:
                continue
            path = record.source.path
            if path is None:
                if session_expired(record):
                    await uploader.abort(record)
                continue
            if not source_unchanged(path, record):
                await uploader.abort(record)
                continue
            content_type, file_name = record.requested_content_type, record.requested_file_name
            sent.append(
                await self.send_file(
                    record.conversation_id,
                    path,
                    content_type=content_type,
                    file_name=file_name,
                    caption=record.caption,
                    request_id=record.request_id,
                    progress=progress,
                )
            )
        return sent

    async def discard_upload(self, request_id: str) -> bool:
        """Abandons an interrupted file send (its session is aborted); returns
        whether there was one."""
        e2ee = self._require_e2ee()
        record = _load_record(e2ee, request_id)
        if record is None:
            e2ee.store.delete_upload(request_id)
            return False
        await self._uploader(e2ee).abort(record)
        return True

    # -- downloading ------------------------------------------------------------------

    @overload
    async def download(
        self, item: MediaItem, *, dest: None = None, thumbnail: bool = False
    ) -> bytes: ...

    @overload
    async def download(
        self, item: MediaItem, *, dest: str | os.PathLike[str], thumbnail: bool = False
    ) -> Path: ...

    async def download(
        self,
        item: MediaItem,
        *,
        dest: str | os.PathLike[str] | None = None,
        thumbnail: bool = False,
    ) -> bytes | Path:
        """Downloads, verifies and decrypts a file; its bytes, or with ``dest``
        the path written (a directory gets the sender's file name in it).

        ``item`` is a message carrying a file (decrypted first if needed) or
        its :class:`Attachment`; ``thumbnail`` fetches the preview instead.
        Every 64 KiB chunk is authenticated as it arrives: damage stops the
        download at once with :class:`FileDecryptionError`, and nothing is
        written to ``dest`` (a temporary file beside it is removed). A dropped
        connection resumes with a Range request. Raises
        :class:`MediaAccessDeniedError`, :class:`MediaArchivedError` (see
        :meth:`restore_media`) and :class:`MediaQuarantinedError`.
        """
        attachment = await self._attachment_of(item)
        media_id, key, digest, size = (
            attachment.media_id,
            attachment.key,
            attachment.digest,
            attachment.size,
        )
        name = attachment.file_name
        if thumbnail:
            if attachment.thumbnail is None:
                raise ValueError("this attachment has no thumbnail")
            preview = attachment.thumbnail
            media_id, key, digest, size = (
                preview.media_id,
                preview.key,
                preview.digest,
                preview.size,
            )
            name = f"{Path(name).stem or media_id[:16]}.thumbnail.jpg"

        async def fresh_request() -> media_pb2.PresignedRequest:
            answer = await self._session.unary(
                self._session.media.GetDownload, media_pb2.GetDownloadRequest(media_id=media_id)
            )
            if (answer.media.size and answer.media.size != size) or (
                answer.media.sha256 and answer.media.sha256 != digest
            ):
                raise FileDecryptionError(
                    "the server holds another object under this media id than the message names"
                )
            return answer.get

        if dest is None:
            buffer = bytearray()
            await self._fetch(fresh_request, size, key, digest, buffer.extend)
            return bytes(buffer)
        target = _destination(Path(dest), name or media_id[:32])
        handle, temporary = _temporary_beside(target)
        try:
            with handle:
                await self._fetch(fresh_request, size, key, digest, handle.write)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temporary)
            raise
        return target

    async def _fetch(
        self,
        fresh_request: Callable[[], Awaitable[media_pb2.PresignedRequest]],
        size: int,
        key: bytes,
        digest: bytes,
        write: Callable[[bytes], object],
    ) -> None:
        """Streams the ciphertext through the digest and the decryptor into ``write``."""
        decryptor = FileDecryptor(key)
        hasher = hashlib.sha256()

        def consume(piece: bytes) -> None:
            hasher.update(piece)
            opened = decryptor.update(piece)
            if opened:
                write(opened)

        await self._objects.get(fresh_request, size=size, consume=consume)
        if hasher.digest() != digest:
            raise FileDecryptionError("the downloaded ciphertext does not match its digest")
        write(decryptor.finalize())

    async def _attachment_of(self, item: MediaItem) -> Attachment:
        if isinstance(item, Attachment):
            return item
        if isinstance(item, SentFile):
            return item.attachment
        if isinstance(item, DecryptedMessage | MessageEvent):
            if item.attachment is not None:
                return item.attachment
            message = item.message
        elif isinstance(item, messages_pb2.Message):
            message = item
        else:
            raise TypeError(f"not a message or an attachment: {type(item).__name__}")
        decrypted = await self._require_e2ee().decrypt(message)
        if decrypted.attachment is None:
            why = f" ({decrypted.error})" if decrypted.error else ""
            raise ValueError(f"message {message.message_id} carries no file{why}")
        return decrypted.attachment

    # -- archived media, quotas ----------------------------------------------------------

    async def restore_media(self, media: str | MediaItem, *, days: int = 1) -> Restore:
        """Starts restoring an archived file (``MediaArchivedError`` on download)
        for ``days`` (1-30); idempotent. This device gets a
        :class:`MediaNoticeEvent` (``RESTORE_READY``) on its stream when the
        file can be downloaded."""
        request = media_pb2.RestoreMediaRequest(media_id=await self._media_id(media), days=days)
        return Restore.from_proto(
            await self._session.unary(self._session.media.RestoreMedia, request)
        )

    async def get_restore(self, media: str | MediaItem) -> Restore:
        """Where the restore of an archived file stands."""
        request = media_pb2.GetRestoreRequest(media_id=await self._media_id(media))
        return Restore.from_proto(
            await self._session.unary(self._session.media.GetRestore, request)
        )

    async def get_media_quota(self) -> MediaQuota:
        """This account's upload and storage quotas and what is used of them."""
        quota = await self._session.unary(self._session.media.GetQuota, media_pb2.GetQuotaRequest())
        return MediaQuota.from_proto(quota)

    async def _media_id(self, media: str | MediaItem) -> str:
        return media if isinstance(media, str) else (await self._attachment_of(media)).media_id


async def _send_pointer(e2ee: E2EE, record: UploadRecord) -> messages_pb2.Message:
    """The message announcing the record's completed upload, under its request id."""
    attachment = record.attachment()
    return await e2ee.send_content(
        record.conversation_id,
        attachment_content(attachment.to_proto()),
        type=message_type_of(attachment.content_type),
        media_ids=attachment.media_ids,
        request_id=record.request_id,
    )


def _load_record(e2ee: E2EE, request_id: str) -> UploadRecord | None:
    text = e2ee.store.load_upload(request_id)
    if text is None:
        return None
    try:
        return UploadRecord.from_json(text)
    except ValueError:
        e2ee.store.delete_upload(request_id)  # unreadable: start afresh
        return None


def _destination(dest: Path, name: str) -> Path:
    if dest.is_dir():
        return dest / (safe_file_name(name) or "download")
    return dest


def _temporary_beside(target: Path) -> tuple[IO[bytes], str]:
    """A private temporary file in the target's directory, so the final rename
    is atomic and a failed download leaves nothing under the target's name."""
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    return os.fdopen(fd, "wb"), name
