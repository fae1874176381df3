"""The authenticated caller of the current RPC.

The auth interceptor sets it from the verified token; servicers read it with
``current_caller()``. Identity never comes from a request body.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass

from parley_core.auth.credentials import Principal
from parley_core.errors import Unauthenticated


@dataclass(frozen=True, slots=True)
class Caller:
    account_id: str
    device_id: str
    token_id: str
    # Unix seconds; a delivery stream is closed when its token expires.
    expires_at: float


_caller: contextvars.ContextVar[Caller | None] = contextvars.ContextVar(
    "parley_caller", default=None
)


def set_caller(caller: Caller | None) -> contextvars.Token[Caller | None]:
    return _caller.set(caller)


def current_caller() -> Caller:
    caller = _caller.get()
    if caller is None:
        raise Unauthenticated("this call needs an access token")
    return caller


_principal: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "parley_principal", default=None
)


def set_principal(principal: Principal | None) -> contextvars.Token[Principal | None]:
    return _principal.set(principal)


def current_principal() -> Principal:
    """The service or operator behind a privileged RPC (see credentials.py)."""
    principal = _principal.get()
    if principal is None:
        raise Unauthenticated("this call needs a service or operator credential")
    return principal
