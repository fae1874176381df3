"""Client methods for history exports ("download my history")."""

from __future__ import annotations

import json
from typing import Any

import grpc
import httpx

from parley.message.v1 import messages_pb2
from parley_sdk._export_models import ExportState, HistoryExport
from parley_sdk._paging import ClientBase, Pager
from parley_sdk.errors import FailedPreconditionError, UnavailableError
from parley_sdk.retry import new_request_id

__all__ = ["ExportMethods"]

# Exports are listed a page of at most this many at a time.
MAX_PAGE = 100


class ExportMethods(ClientBase):
    """Exports of the account's readable history as JSON lines of ciphertext
    records (docs/ARCHITECTURE.md, History export): request one, watch its
    progress (or wait for an :class:`ExportNoticeEvent` on :meth:`events`),
    then download it."""

    async def request_history_export(
        self, conversation_id: str | None = None, *, request_id: str | None = None
    ) -> HistoryExport:
        """Starts an export of one conversation, or of every conversation the
        account is or was in (``conversation_id`` None). While one of the same
        scope is unfinished, that one is returned."""
        request = messages_pb2.RequestHistoryExportRequest(
            request_id=request_id or new_request_id()
        )
        if conversation_id is None:
            request.all = True
        else:
            request.conversation_id = conversation_id
        response = await self._session.unary(self._session.messages.RequestHistoryExport, request)
        return HistoryExport.from_proto(response)

    async def get_history_export(self, export_id: str) -> HistoryExport:
        response = await self._session.unary(
            self._session.messages.GetHistoryExport,
            messages_pb2.GetHistoryExportRequest(export_id=export_id),
        )
        return HistoryExport.from_proto(response)

    def iter_history_exports(self, *, page_size: int | None = None) -> Pager[HistoryExport]:
        """The account's exports, newest first."""
        size = self._size(page_size, MAX_PAGE)
        return Pager(
            self._session,
            self._session.messages.ListHistoryExports,
            lambda token: messages_pb2.ListHistoryExportsRequest(page_size=size, page_token=token),
            "exports",
            HistoryExport.from_proto,
        )

    async def cancel_history_export(self, export_id: str) -> HistoryExport:
        response = await self._session.unary(
            self._session.messages.CancelHistoryExport,
            messages_pb2.CancelHistoryExportRequest(export_id=export_id),
        )
        return HistoryExport.from_proto(response)

    async def download_history_export(
        self, export_id: str, *, timeout: float = 120.0
    ) -> list[dict[str, Any]]:
        """The records of a READY export (FailedPreconditionError otherwise),
        each a dict of the ``parley.history_export.v1`` format; ``body`` is
        the ciphertext in base64."""
        export = await self.get_history_export(export_id)
        if export.state is not ExportState.READY or not export.download_url:
            raise FailedPreconditionError(
                f"the export is {export.state.name}, not READY",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            )
        try:
            async with httpx.AsyncClient(timeout=timeout) as http:
                reply = await http.get(export.download_url)
        except httpx.HTTPError as exc:
            raise UnavailableError(
                f"the export download failed: {exc}", code=grpc.StatusCode.UNAVAILABLE
            ) from exc
        if reply.status_code != 200:
            raise UnavailableError(
                f"the export download answered HTTP {reply.status_code}",
                code=grpc.StatusCode.UNAVAILABLE,
            )
        return [json.loads(line) for line in reply.content.splitlines() if line]
