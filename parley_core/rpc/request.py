"""One request context per RPC: what every servicer method needs besides the
request message, gathered once when the method starts.

The caller comes from the token the auth interceptor verified, never from
the request body; the bearer token is kept only to forward the caller's
own credentials to another service.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from parley_core.auth.caller import Caller, current_caller
from parley_core.rpc.interceptor import bearer_token


@dataclass(frozen=True, slots=True)
class RequestContext:
    caller: Caller
    # Unix seconds, read once, so every step of the RPC sees the same time.
    now: float
    # Lower-cased: a retry may spell the same UUID in another case. Empty for
    # RPCs without one.
    request_id: str
    _metadata: tuple[tuple[str, Any], ...]

    @property
    def account_id(self) -> str:
        return self.caller.account_id

    @property
    def device_id(self) -> str:
        return self.caller.device_id

    @property
    def bearer_token(self) -> str:
        """The caller's access token, for calls made on its behalf."""
        return bearer_token(self._metadata)


def request_context(
    context: Any, *, clock: Callable[[], float], request_id: str = ""
) -> RequestContext:
    """The context of the current RPC; ``request_id`` as the request carries
    it, validated beforehand with the request's other fields."""
    return RequestContext(
        caller=current_caller(),
        now=clock(),
        request_id=request_id.lower(),
        _metadata=tuple(context.invocation_metadata() or ()),
    )
