"""The machinery of the fuzz tests (tests/chaos/test_fuzz.py on the shared
chaos stack, tests/chaos/test_fuzz_limits.py on one whose limits refuse):
the world of real ids they aim with, hypothesis strategies for any request
message and for bytes that are none, a blocking caller, and what an answer
may be.

Every answer must be an expected status (never INTERNAL, UNKNOWN,
UNAVAILABLE...). A RESOURCE_EXHAUSTED must say why: gRPC's own refusal of a
request over the size limit (no details), a cap with its own reason, or a
rate-limit refusal naming one of the RPC's limits with a RetryInfo.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import grpc
from google.protobuf import message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley.keys.v1 import accounts_pb2 as kpb
from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from tests.chaos.fuzz_world import (
    ACCOUNT_SERVICE,
    INTERNAL_SERVICES,
    KEY_SERVICE,
    MEDIA_ADMIN_SERVICE,
    MEDIA_REFERENCE_SERVICE,
    MEDIA_SERVICES,
    PRESENCE_INTERNAL_SERVICE,
    PRESENCE_SERVICE,
    SEARCH_SERVICES,
    UNARY,
    World,
    forwarded_for,
)
from tests.chaos.spared import spared
from tests.helpers import auth
from tests.limited_rpcs import LIMITS_BY_RPC
from tests.refusals import RATE_LIMITED, rate_limit_problem, refused

PUBLIC = {"SignUp", "RefreshToken"}

# Every status a well-behaved service may answer a client's request with.
EXPECTED = frozenset(
    {
        grpc.StatusCode.OK,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.ALREADY_EXISTS,
        grpc.StatusCode.FAILED_PRECONDITION,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.UNAUTHENTICATED,
    }
)
CALL_TIMEOUT = 30.0
FUZZ = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.function_scoped_fixture,
    ],
)


# -- strategies ------------------------------------------------------------------------

HUGE_SIZES = (300, 65_537, 300_000)


def huge_text() -> st.SearchStrategy[str]:
    return st.builds(
        lambda ch, n: ch * n,
        st.sampled_from(["a", "é", "\U0001f600", "\x00", "-"]),
        st.sampled_from(HUGE_SIZES),
    )


def string_values(world: World, name: str) -> st.SearchStrategy[str]:
    choices: list[st.SearchStrategy[str]] = [
        st.sampled_from(world.ids()),
        st.text(max_size=40),
        st.just(""),
        huge_text(),
    ]
    if name.endswith("page_token"):
        choices += [
            st.sampled_from([t for t in world.page_tokens if t] or ["x"]),
            st.binary(max_size=64).map(lambda b: base64.urlsafe_b64encode(b).decode()),
            st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
            st.sampled_from(["e30", "eyJwIjp7fX0", "eyJwIjp7InNlcSI6LTF9LCJzIjoiIn0", "===="]),
        ]
    if name in ("handle", "name", "display_name"):
        choices.append(st.from_regex(r"[a-zA-Z][a-zA-Z0-9_.]{0,40}", fullmatch=True))
    if name in ("request_id",):
        choices.append(st.uuids().map(str))
    if name == "refresh_token":
        choices.append(
            st.sampled_from([f"{world.me.device_id}.x", ".", "a.b", world.me.refresh_token])
        )
    if name == "sync_token":
        choices.append(
            st.one_of(
                st.integers(min_value=-(10**20), max_value=10**20).map(str),
                st.sampled_from(["\u00b2", "\u0661\u0662", "9" * 15, "9" * 16, " 1", "1e3"]),
            )
        )
    return st.one_of(choices)


UNSIGNED = {
    FieldDescriptor.TYPE_UINT32: 2**32 - 1,
    FieldDescriptor.TYPE_FIXED32: 2**32 - 1,
    FieldDescriptor.TYPE_UINT64: 2**64 - 1,
    FieldDescriptor.TYPE_FIXED64: 2**64 - 1,
}


def int_values(field: FieldDescriptor) -> st.SearchStrategy[int]:
    if field.type in UNSIGNED:
        low, high = 0, UNSIGNED[field.type]
    else:
        wide = field.type in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64)
        low, high = (-(2**63), 2**63 - 1) if wide else (-(2**31), 2**31 - 1)
    edges = [v for v in (0, 1, -1, 2, 5, 50, 200, 201, 10_000) if low <= v <= high]
    return st.one_of(
        st.sampled_from([*edges, low, high]),
        st.integers(min_value=low, max_value=high),
    )


def bytes_values() -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.binary(max_size=64),
        st.sampled_from([0, 65_536, 65_537, 1_100_000]).map(lambda n: b"\xff" * n),
    )


def field_values(world: World, field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        return message_values(world, field.message_type, depth + 1)
    if field.type == FieldDescriptor.TYPE_STRING:
        return string_values(world, field.name)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return bytes_values()
    if field.type == FieldDescriptor.TYPE_ENUM:
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    return int_values(field)


def _size(value: Any) -> int:
    return len(value.SerializeToString()) if isinstance(value, Message) else len(str(value))


def _repeated(element: st.SearchStrategy[Any]) -> st.SearchStrategy[list[Any]]:
    small = element.filter(lambda e: _size(e) < 200)
    return st.one_of(
        st.lists(element, max_size=3),
        st.builds(lambda e, n: [e] * n, small, st.sampled_from([100, 10_001])),
    )


def _set(message: Message, field: FieldDescriptor, value: Any) -> None:
    if field.is_repeated:
        target = getattr(message, field.name)
        for item in value:
            if field.type == FieldDescriptor.TYPE_MESSAGE:
                target.add().CopyFrom(item)
            else:
                target.append(item)
    elif field.type == FieldDescriptor.TYPE_MESSAGE:
        getattr(message, field.name).CopyFrom(value)
    else:
        setattr(message, field.name, value)


def message_values(world: World, descriptor: Descriptor, depth: int = 0) -> st.SearchStrategy[Any]:
    cls = message_factory.GetMessageClass(descriptor)
    if depth > 3:
        return st.just(cls())
    plain: dict[str, st.SearchStrategy[Any]] = {}
    for field in descriptor.fields:
        if field.containing_oneof is not None:
            continue
        values = field_values(world, field, depth)
        if field.is_repeated:
            values = _repeated(values)
        plain[field.name] = st.none() | values
    choices: dict[str, st.SearchStrategy[Any]] = {
        oneof.name: st.none()
        | st.one_of(
            [st.tuples(st.just(f.name), field_values(world, f, depth)) for f in oneof.fields]
        )
        for oneof in descriptor.oneofs
    }

    def build(values: dict[str, Any]) -> Message:
        message = cls()
        for field in descriptor.fields:
            if field.containing_oneof is not None:
                chosen = values[field.containing_oneof.name]
                if chosen is not None and chosen[0] == field.name:
                    _set(message, field, chosen[1])
            elif values[field.name] is not None:
                _set(message, field, values[field.name])
        return message

    return st.fixed_dictionaries({**plain, **choices}).map(build)


def raw_values(world: World, descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Bytes that mostly are not a message of ``descriptor``: random bytes,
    another request type, valid requests with bytes flipped or cut."""
    others = [m.input_type for _s, m in UNARY] + [mpb.ClientEvent.DESCRIPTOR]
    valid = message_values(world, descriptor).map(lambda m: m.SerializeToString())

    def damage(raw: bytes, at: int, value: int, cut: bool) -> bytes:
        if not raw:
            return bytes([value])
        i = at % len(raw)
        return raw[:i] if cut else raw[:i] + bytes([value]) + raw[i + 1 :]

    return st.one_of(
        st.binary(max_size=256),
        st.sampled_from([b"\xff", b"\x0a\xff", b"\x0a\x05ab", b"\x12\x80\x80\x80\x80\x10"]),
        st.sampled_from(others).flatmap(
            lambda d: message_values(world, d).map(lambda m: m.SerializeToString())
        ),
        st.builds(damage, valid, st.integers(0, 10_000), st.integers(0, 255), st.booleans()),
    )


# -- calling -----------------------------------------------------------------------------


def _details(error: grpc.RpcError) -> tuple[str, list[str]]:
    status = rpc_status.from_call(error)  # type: ignore[arg-type]
    reason, fields = "", []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            reason = info.reason
        elif detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad = error_details_pb2.BadRequest()
            detail.Unpack(bad)
            fields = [v.field for v in bad.field_violations]
    return reason, fields


def path(service: Any, method: Any) -> str:
    return f"/{service.full_name}/{method.name}"


class Caller:
    """Blocking channels to the stack, plus a disposable account for RPCs that
    may sign the caller out (RevokeDevice with an empty device id)."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.keys = grpc.insecure_channel(world.keys_target)
        self.message = grpc.insecure_channel(world.message_targets[0])
        self.presence = grpc.insecure_channel(world.presence_target)
        self.media = grpc.insecure_channel(world.media_target)
        self.search = grpc.insecure_channel(world.search_target)
        self._disposable: str | None = None
        # Well-formed rate-limit refusals seen, by RPC.
        self.rate_limited: dict[str, int] = {}

    def channel(self, service: Any) -> grpc.Channel:
        if service in (PRESENCE_SERVICE, PRESENCE_INTERNAL_SERVICE):
            return self.presence
        if service in MEDIA_SERVICES:
            return self.media
        if service in SEARCH_SERVICES:
            return self.search
        return self.keys if service in (ACCOUNT_SERVICE, KEY_SERVICE) else self.message

    def disposable_token(self) -> str:
        if self._disposable is None:
            stub = kgrpc.AccountServiceStub(self.keys)
            reply = stub.SignUp(
                kpb.SignUpRequest(
                    request_id=str(uuid.uuid4()),
                    handle=f"fz_{uuid.uuid4().hex[:12]}",
                    device=kpb.NewDevice(name="fuzz", platform=1),
                ),
                metadata=forwarded_for(self.world.address),
                timeout=CALL_TIMEOUT,
            )
            self._disposable = reply.credentials.access_token
        return self._disposable

    def metadata(self, method: Any) -> tuple[tuple[str, str], ...]:
        if method.containing_service in INTERNAL_SERVICES:
            return auth(self.world.service_token)
        if method.name in PUBLIC:
            return ()
        if method.containing_service is MEDIA_ADMIN_SERVICE:
            return auth(self.world.operator_token)
        if method.containing_service is MEDIA_REFERENCE_SERVICE:
            return auth(self.world.service_token)
        if method.name in ("RevokeDevice", "DeleteAccount"):
            return auth(self.disposable_token())
        return self.world.me.md

    def _spared(self, method: Any, raw: bytes) -> bytes:
        me, peer = self.world.me, self.world.peer
        accounts, devices = (me.account_id, peer.account_id), (me.device_id, peer.device_id)
        return spared(method, raw, accounts=accounts, devices=devices)

    def unary(self, service: Any, method: Any, raw: bytes) -> grpc.RpcError | None:
        if method.server_streaming:
            return self._first_of_stream(service, method, raw)
        call = self.channel(service).unary_unary(
            path(service, method), request_serializer=None, response_deserializer=None
        )
        try:
            call(self._spared(method, raw), metadata=self.metadata(method), timeout=CALL_TIMEOUT)
        except grpc.RpcError as error:
            if method.name == "RevokeDevice" or _details(error)[0] == "ERROR_REASON_TOKEN_REVOKED":
                self._disposable = None
            return error
        if method.name in ("RevokeDevice", "DeleteAccount"):
            self._disposable = None  # it may have signed itself out, or be erased
        return None

    def _first_of_stream(self, service: Any, method: Any, raw: bytes) -> grpc.RpcError | None:
        stream = self.channel(service).unary_stream(
            path(service, method), request_serializer=None, response_deserializer=None
        )
        responses = stream(raw, metadata=self.metadata(method), timeout=CALL_TIMEOUT)
        try:
            next(responses)
        except StopIteration:
            return None
        except grpc.RpcError as error:
            return error
        finally:
            responses.cancel()
        return None

    def close(self) -> None:
        self.keys.close()
        self.message.close()
        self.presence.close()
        self.media.close()
        self.search.close()


def assert_healthy(world: World) -> None:
    targets = [
        world.keys_target,
        *world.message_targets,
        world.presence_target,
        world.media_target,
        world.search_target,
    ]
    for target in targets:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, target
    # And they still do real work for a real user.
    with grpc.insecure_channel(world.message_targets[0]) as channel:
        mgrpc.MessageServiceStub(channel).GetConversation(
            mpb.GetConversationRequest(conversation_id=world.conversation),
            metadata=world.me.md,
            timeout=CALL_TIMEOUT,
        )


def status_problem(error: grpc.RpcError, method: str, *, size: int, max_bytes: int) -> str | None:
    """Why ``error`` is no answer a well-behaved service gives to a request of
    ``size`` bytes for ``method``; None when it is one."""
    code = error.code()  # type: ignore[attr-defined]
    if code not in EXPECTED:
        return f"{code} {error.details()!r}"  # type: ignore[attr-defined]
    if code != grpc.StatusCode.RESOURCE_EXHAUSTED:
        return None
    shape = refused(error)
    if not shape.reason:
        if size > max_bytes:
            return None  # gRPC's own refusal of a message over the size limit
        return f"RESOURCE_EXHAUSTED without ErrorInfo for {size} bytes: {shape.describe()}"
    if shape.reason != RATE_LIMITED:
        return None  # a cap with a reason of its own (GROUP_FULL, TOO_MANY_PRE_KEYS...)
    if method == "SubscribePresence" and not shape.limit and shape.retry_delay:
        # The per-process caps on open subscriptions (not a token bucket).
        return None
    return rate_limit_problem(shape, LIMITS_BY_RPC.get(method, frozenset()))


def check_status(
    caller: Caller, error: grpc.RpcError | None, what: str, *, service: Any, method: Any, size: int
) -> None:
    if error is None:
        return
    max_bytes = caller.world.max_request_bytes[service.full_name]
    problem = status_problem(error, method.name, size=size, max_bytes=max_bytes)
    assert problem is None, f"{what}: {problem}"
    if refused(error).reason == RATE_LIMITED:
        caller.rate_limited[method.name] = caller.rate_limited.get(method.name, 0) + 1


def parses(descriptor: Descriptor, raw: bytes) -> Message | None:
    try:
        return message_factory.GetMessageClass(descriptor).FromString(raw)
    except DecodeError:
        return None


def fuzz_fields(caller: Caller, service: Any, method: Any, fuzz: Any = FUZZ) -> None:
    """Random requests of the method's type: every answer an expected one."""

    @fuzz
    @given(request=message_values(caller.world, method.input_type))
    def run(request: Message) -> None:
        raw = request.SerializeToString()
        error = caller.unary(service, method, raw)
        what = f"{method.name}({request!r:.300})"
        check_status(caller, error, what, service=service, method=method, size=len(raw))

    run()


def fuzz_bytes(caller: Caller, service: Any, method: Any, fuzz: Any = FUZZ) -> None:
    """Bytes that mostly are no request of the method's type: INVALID_ARGUMENT
    (or gRPC's own size refusal) for those, an expected answer for the rest."""
    world = caller.world

    @fuzz
    @given(raw=raw_values(world, method.input_type))
    def run(raw: bytes) -> None:
        error = caller.unary(service, method, raw)
        if len(raw) > world.max_request_bytes[service.full_name]:
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
            return
        if parses(method.input_type, raw) is not None:
            what = f"{method.name}({raw[:100]!r})"
            check_status(caller, error, what, service=service, method=method, size=len(raw))
            return
        assert error is not None, f"{method.name} accepted undecodable bytes {raw[:100]!r}"
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (  # type: ignore[attr-defined]
            f"{method.name}({raw[:100]!r}): {error.code()} {error.details()!r}"  # type: ignore[attr-defined]
        )
        assert _details(error) == ("ERROR_REASON_INVALID_FIELD", ["request"])

    run()
