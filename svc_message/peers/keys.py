"""svc_keys as seen from svc_message: does an account exist?"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import grpc

from parley.keys.v1 import accounts_pb2, accounts_pb2_grpc
from parley_core.errors import Reason, Unavailable

LOOKUP_TIMEOUT_SECONDS = 3.0


class AccountDirectory:
    """Looks accounts up in svc_keys with the caller's own token. Accounts that
    exist are remembered (bounded), so a chat's first message does not wait on
    another service."""

    def __init__(
        self,
        target: str,
        *,
        cache_size: int = 100_000,
        interceptors: Sequence[grpc.aio.ClientInterceptor] = (),
    ) -> None:
        # Interceptors: tracing's, when it is on (client spans, context sent along).
        self._channel = grpc.aio.insecure_channel(target, interceptors=list(interceptors) or None)
        self._stub = accounts_pb2_grpc.AccountServiceStub(self._channel)
        self._known: OrderedDict[str, None] = OrderedDict()
        self._cache_size = cache_size

    async def exists(self, account_id: str, *, bearer_token: str) -> bool:
        if account_id in self._known:
            return True
        try:
            await self._stub.GetAccount(
                accounts_pb2.GetAccountRequest(account_id=account_id),
                metadata=(("authorization", f"Bearer {bearer_token}"),),
                timeout=LOOKUP_TIMEOUT_SECONDS,
            )
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise Unavailable(
                "the account directory (svc_keys) did not answer; retry",
                reason=Reason.DEPENDENCY_UNAVAILABLE,
                retry_after_seconds=1.0,
            ) from None
        self._known[account_id] = None
        if len(self._known) > self._cache_size:
            self._known.popitem(last=False)
        return True

    async def close(self) -> None:
        await self._channel.close(grace=None)
