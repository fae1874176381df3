"""Other svc_message processes of the region, as owners of conversations.

A request is forwarded as the bytes the caller sent (re-serialized) to the
same MessageService method of the owner, with the caller's own token and the
forwarded mark; the owner's answer comes back as bytes and is relayed as is.
One channel per owner address, kept while the process runs.
"""

from __future__ import annotations

from collections.abc import Sequence

import grpc

from parley.message.v1 import messages_pb2
from parley_core.errors import Unavailable
from svc_message.model.ownership import FORWARDED_METADATA, OwnerRefused, OwnerUnreachable

SERVICE = messages_pb2.DESCRIPTOR.services_by_name["MessageService"].full_name
STATUS_DETAILS_KEY = "grpc-status-details-bin"


def _status_details(error: grpc.aio.AioRpcError) -> bytes:
    # grpc.aio hands trailing metadata over as aio.Metadata.
    trailing = error.trailing_metadata()
    value = trailing.get(STATUS_DETAILS_KEY) if isinstance(trailing, grpc.aio.Metadata) else None
    return value if isinstance(value, bytes) else b""


class OwnerChannels:
    def __init__(self, *, interceptors: Sequence[grpc.aio.ClientInterceptor] = ()) -> None:
        self._interceptors = list(interceptors) or None
        self._channels: dict[str, grpc.aio.Channel] = {}

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = grpc.aio.insecure_channel(address, interceptors=self._interceptors)
            self._channels[address] = channel
        return channel

    async def forward(
        self,
        address: str,
        method: str,
        request: bytes,
        *,
        bearer_token: str,
        timeout: float,
        mark: str = FORWARDED_METADATA,
    ) -> bytes:
        """``mark``: the metadata key that tells the receiver not to forward
        again (another process of the region, or another region)."""
        # No (de)serializers: the request and the answer pass as bytes.
        call = self._channel(address).unary_unary(
            f"/{SERVICE}/{method}", request_serializer=None, response_deserializer=None
        )
        try:
            answer: bytes = await call(
                request,
                metadata=(
                    ("authorization", f"Bearer {bearer_token}"),
                    (mark, "1"),
                ),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as error:
            details = _status_details(error)
            code = error.code()
            if not details and code == grpc.StatusCode.UNAVAILABLE:
                # gRPC's own: the owner is not there (dead, restarting, or
                # refusing new calls while it drains); nothing reached it.
                raise OwnerUnreachable(error.details() or "unreachable") from None
            if not details and code == grpc.StatusCode.DEADLINE_EXCEEDED:
                # It may have been applied: the caller's retry with the same
                # request_id finds out.
                raise Unavailable(
                    "the server owning this conversation did not answer in time; retry with "
                    "the same request_id",
                    retry_after_seconds=0.5,
                ) from None
            raise OwnerRefused(code.value[0], error.details() or "", details) from None
        return answer

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close(grace=None)
        self._channels.clear()
