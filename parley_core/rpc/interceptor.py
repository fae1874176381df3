"""The one interceptor every RPC passes through.

In a single wrapper (one layer is cheaper than a chain on the hot path) it:
- authenticates the caller from ``authorization: Bearer`` metadata, except for
  the public methods, and exposes it through ``current_caller()``; the RPCs of
  privileged services (internal, operator-only) take their own credential
  instead, exposed through ``current_principal()``, and never an access token;
- answers INVALID_ARGUMENT for a request whose bytes are not a message of the
  method's request type (gRPC itself would answer INTERNAL before any
  interceptor runs): each handler's deserializer is wrapped so that a failure
  yields a sentinel, which the wrapped behaviour turns into the error;
- maps ParleyError to its status code with google.rpc details, a backing
  store that cannot be reached (the database or Redis driver's connection
  errors) to UNAVAILABLE, and anything else unexpected to INTERNAL with a
  generic message (the traceback goes to the log only);
- records RED metrics and logs failures.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

import grpc
import structlog
from opentelemetry import trace
from opentelemetry.trace import Status, StatusCode

from parley_core.auth.caller import Caller, set_caller, set_principal
from parley_core.auth.credentials import Principal
from parley_core.auth.tokens import TokenVerifier
from parley_core.errors import (
    InvalidArgument,
    ParleyError,
    Reason,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)
from parley_core.rpc.metrics import RpcMetrics
from parley_core.rpc.status import internal_status, to_grpc_status

log = structlog.get_logger(__name__)

HEALTH_PREFIX = "/grpc.health.v1.Health/"
# A held refusal is answered this long before the call's deadline at the latest.
DEADLINE_MARGIN_SECONDS = 0.05
# RetryInfo never says "now" (as the limiter's own refusals).
LEAST_RETRY_SECONDS = 0.001
REFLECTION_PREFIXES = (
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)

# grpc-stubs makes these generic for type checking only.
if TYPE_CHECKING:
    Handler = grpc.RpcMethodHandler[Any, Any]
    _InterceptorBase = grpc.aio.ServerInterceptor[Any, Any]
else:
    Handler = grpc.RpcMethodHandler
    _InterceptorBase = grpc.aio.ServerInterceptor


def bearer_token(metadata: Iterable[tuple[str, Any]] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Unauthenticated("authorization metadata must be 'Bearer <access token>'")
            return token.strip()
    raise Unauthenticated("this call needs an access token in the authorization metadata")


# Errors of the drivers that mean "the dependency cannot be reached right now",
# by (module, class name) so the transport layer needs no driver import: the
# MongoDB driver's connection failures (server selection, network, pool
# timeouts), Redis connection errors and timeouts, and a Redis Cluster in the
# middle of a failover (down, a slot without a master, try again).
_UNREACHABLE = frozenset(
    {
        ("pymongo.errors", "ConnectionFailure"),
        ("redis.exceptions", "ConnectionError"),
        ("redis.exceptions", "TimeoutError"),
        ("redis.exceptions", "ClusterError"),
        ("redis.exceptions", "SlotNotCoveredError"),
        ("redis.exceptions", "TryAgainError"),
        ("builtins", "ConnectionError"),
    }
)


def _unreachable(error: BaseException) -> bool:
    return any((cls.__module__, cls.__qualname__) in _UNREACHABLE for cls in type(error).__mro__)


def _store_unreachable() -> Unavailable:
    return Unavailable("a backing store is unreachable; retry shortly", retry_after_seconds=1.0)


def _as_parley_error(error: BaseException) -> BaseException:
    """The error as clients should see it: an unreachable store is UNAVAILABLE."""
    if not isinstance(error, ParleyError) and _unreachable(error):
        return _store_unreachable()
    return error


# Statuses that are the server's failure, not the caller's: the trace span of
# such a call is marked as an error (OpenTelemetry's gRPC conventions).
_SERVER_FAILURES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


def _mark_span(code: grpc.StatusCode) -> None:
    """Record the status on the call's server span. The tracing interceptor
    only sees statuses set through ``abort``; Parley aborts with details
    (``abort_with_status``). Without tracing the current span is a no-op."""
    span = trace.get_current_span()
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    if code in _SERVER_FAILURES:
        span.set_status(Status(StatusCode.ERROR, code.name))


def _code_name(error: BaseException) -> str:
    if isinstance(error, ParleyError):
        return error.code.value
    return "UNIMPLEMENTED" if isinstance(error, NotImplementedError) else "INTERNAL"


# What a request deserializes to when its bytes are not a message of the
# method's request type.
_UNDECODABLE = object()


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def deserialize(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception:
            return _UNDECODABLE

    return deserialize


def _check_decoded(request: Any) -> None:
    if request is _UNDECODABLE:
        raise InvalidArgument.field(
            "request", "not a valid protobuf message of this method's request type"
        )


async def _checked_stream(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        _check_decoded(request)
        yield request


class ServiceInterceptor(_InterceptorBase):
    def __init__(
        self,
        *,
        verifier: TokenVerifier,
        public_methods: Iterable[str],
        metrics: RpcMetrics,
        privileged_services: Mapping[str, Callable[[str], Principal]] | None = None,
        refusal_hold_seconds: float = 0.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._verifier = verifier
        self._public = frozenset(public_methods)
        # Full service name (e.g. "parley.media.v1.MediaAdminService") -> the
        # check of its credential.
        self._privileged = dict(privileged_services or {})
        self._refusal_hold = refusal_hold_seconds
        self._metrics = metrics
        self._clock = clock
        self._wrapped: dict[str, Handler] = {}

    def _is_public(self, method: str) -> bool:
        return (
            method in self._public
            or method.startswith(HEALTH_PREFIX)
            or method.startswith(REFLECTION_PREFIXES)
        )

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        method: str = handler_call_details.method
        wrapped = self._wrapped.get(method)
        if wrapped is not None:
            return wrapped
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # type: ignore[return-value]  # unknown method: gRPC answers UNIMPLEMENTED
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _authenticate(self, context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
        token = bearer_token(context.invocation_metadata())
        return self._verifier.verify(token, now=self._clock())

    async def _hold(self, context: Any, refusal: ResourceExhausted) -> None:
        """Hold a rate-limit refusal for up to ``refusal_hold_seconds``, within
        its RetryInfo delay and the call's deadline, and shorten the delay by
        the time held."""
        wait = refusal.retry_after_seconds or 0.0
        hold = min(self._refusal_hold, wait)
        remaining = context.time_remaining()
        if remaining is not None:
            hold = min(hold, remaining - DEADLINE_MARGIN_SECONDS)
        if hold <= 0:
            return
        await asyncio.sleep(hold)
        refusal.retry_after_seconds = max(wait - hold, LEAST_RETRY_SECONDS)

    async def _fail(self, context: Any, method: str, error: BaseException) -> str:
        """Abort the call with the mapped status; returns the code name for metrics."""
        if (
            self._refusal_hold
            and isinstance(error, ResourceExhausted)
            and error.reason == Reason.RATE_LIMITED
        ):
            await self._hold(context, error)
        if isinstance(error, NotImplementedError):
            # How generated servicer bases say "this RPC is not implemented".
            await context.abort(grpc.StatusCode.UNIMPLEMENTED, "method not implemented")
        if isinstance(error, ParleyError):
            status = to_grpc_status(error)
            if error.code.value in ("INTERNAL", "UNAVAILABLE"):
                log.warning("rpc_failed", method=method, code=error.code.value, error=error.message)
        elif _unreachable(error):
            log.warning("rpc_dependency_unreachable", method=method, error=repr(error))
            status = to_grpc_status(_store_unreachable())
        else:
            log.error("rpc_crashed", method=method, exc_info=error)
            status = internal_status()
        _mark_span(status.code)
        await context.abort_with_status(status)
        return status.code.name  # pragma: no cover - abort raises

    def _wrap(self, method: str, handler: Handler) -> Handler:
        public = self._is_public(method)
        service, _, short = method.lstrip("/").rpartition("/")
        metrics = self._metrics
        streaming_requests = bool(handler.request_streaming)
        privileged = self._privileged.get(service)

        def begin(context: grpc.aio.ServicerContext[Any, Any]) -> None:
            if privileged is not None:
                set_caller(None)
                set_principal(privileged(bearer_token(context.invocation_metadata())))
                return
            set_principal(None)
            set_caller(None if public else self._authenticate(context))

        def code_of(context: grpc.aio.ServicerContext[Any, Any], fallback: str) -> str:
            code = context.code()
            return code.name if isinstance(code, grpc.StatusCode) else fallback

        async def run_unary(behavior: Callable[..., Any], request: Any, context: Any) -> Any:
            started = time.perf_counter()
            metrics.started(short)
            code = "OK"
            try:
                begin(context)
                if streaming_requests:
                    request = _checked_stream(request)
                else:
                    _check_decoded(request)
                return await behavior(request, context)
            except grpc.aio.AbortError:
                code = code_of(context, "UNKNOWN")
                raise
            except Exception as error:
                code = _code_name(_as_parley_error(error))
                await self._fail(context, method, error)
                raise  # pragma: no cover - _fail raised AbortError
            finally:
                metrics.finished(short, code, time.perf_counter() - started)

        def run_stream(
            behavior: Callable[..., AsyncIterator[Any]],
        ) -> Callable[[Any, Any], AsyncIterator[Any]]:
            # The handler itself, not a generator around one: each response
            # passes every generator layer, and a big group's fan-out writes
            # one response per member's stream per message.
            async def streaming(request: Any, context: Any) -> AsyncIterator[Any]:
                started = time.perf_counter()
                metrics.started(short)
                code = "OK"
                try:
                    begin(context)
                    if streaming_requests:
                        request = _checked_stream(request)
                    else:
                        _check_decoded(request)
                    async for response in behavior(request, context):
                        yield response
                except grpc.aio.AbortError:
                    code = code_of(context, "UNKNOWN")
                    raise
                except Exception as error:
                    code = _code_name(_as_parley_error(error))
                    await self._fail(context, method, error)
                finally:
                    if code == "OK":
                        # Closed from outside (a stream the servicer ended for a
                        # client that stopped reading): the status it was given.
                        code = code_of(context, code)
                    metrics.finished(short, code, time.perf_counter() - started)

            return streaming

        def wrap(behavior: Callable[..., Any] | None) -> Callable[..., Any] | None:
            if behavior is None:
                return None
            if inspect.isasyncgenfunction(behavior):
                # gRPC picks the streaming mode by inspecting the function itself,
                # so the wrapper must be an async generator function too.
                return run_stream(behavior)

            async def unary(request: Any, context: Any) -> Any:
                return await run_unary(behavior, request, context)

            return unary

        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(
                wrap(handler.unary_unary),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                wrap(handler.unary_stream),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                wrap(handler.stream_unary),  # type: ignore[arg-type]
                request_deserializer=_tolerant(handler.request_deserializer),
                response_serializer=handler.response_serializer,
            )
        return grpc.stream_stream_rpc_method_handler(
            wrap(handler.stream_stream),  # type: ignore[arg-type]
            request_deserializer=_tolerant(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
