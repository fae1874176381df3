"""Calls served in the caller's home region, wherever the device connected
(docs/design/regions.md): a device's own account, devices, tokens, keys and
envelopes live there. The region a call reaches forwards it, once, as the
caller, and relays the answer."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from parley_core.auth.caller import current_caller
from parley_core.regions import region_forwarded
from parley_core.rpc.interceptor import bearer_token
from svc_keys.domain.key_routing import KeyRegionRouter

Method = Callable[[Any, Any, Any], Awaitable[Any]]
HomeOf = Callable[[KeyRegionRouter, Any], "str | None"]
Answer = TypeVar("Answer", bound=Message)


class Routed(Protocol):
    _router: KeyRegionRouter | None


async def forward(
    router: KeyRegionRouter,
    region: str,
    path: str,
    request: Any,
    context: Any,
    answer_type: type[Answer],
    *,
    authenticated: bool = True,
) -> Answer:
    """``path``: ``/package.Service/Method``; the answer parsed as ``answer_type``."""
    metadata = context.invocation_metadata()
    answer = await router.forward(
        region,
        path,
        request.SerializeToString(),
        bearer_token=bearer_token(metadata) if authenticated else None,
        forwarded=region_forwarded(metadata),
    )
    return answer_type.FromString(answer)


def callers_home(router: KeyRegionRouter, request: Any) -> str | None:
    return router.remote_home(current_caller().account_id)


def refresh_tokens_home(router: KeyRegionRouter, request: Any) -> str | None:
    # A refresh token is "<device id>.<secret>"; device ids carry their home.
    device_id, _, _ = str(request.refresh_token).partition(".")
    return router.remote_home(device_id) if device_id else None


def served_at_home(
    service: str, answer_type: Any, *, home_of: HomeOf = callers_home, authenticated: bool = True
) -> Callable[[Method], Method]:
    def decorate(method: Method) -> Method:
        path = f"/{service}/{method.__name__}"

        @functools.wraps(method)
        async def served(self: Routed, request: Any, context: Any) -> Any:
            router = self._router
            if router is not None:
                home = home_of(router, request)
                if home is not None:
                    return await forward(
                        router,
                        home,
                        path,
                        request,
                        context,
                        answer_type,
                        authenticated=authenticated,
                    )
            return await method(self, request, context)

        return served

    return decorate
