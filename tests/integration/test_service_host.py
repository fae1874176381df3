"""The shared gRPC host over real loopback gRPC: error mapping, auth,
health, reflection, metrics and graceful shutdown."""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
import pytest_asyncio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client import CollectorRegistry

from parley.message.v1 import internal_pb2 as ipb
from parley.message.v1 import internal_pb2_grpc as igrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_core.auth.caller import current_caller, current_principal
from parley_core.auth.credentials import ServiceCredential, new_token
from parley_core.auth.revocations import RevocationList
from parley_core.auth.tokens import (
    TokenIssuer,
    TokenVerifier,
    load_private_key,
    load_public_keys,
    write_key_pair,
)
from parley_core.config import ServerSettings
from parley_core.errors import NotFound, Reason, ResourceExhausted
from parley_core.rpc.interceptor import ServiceInterceptor
from parley_core.rpc.metrics import RpcMetrics
from parley_core.rpc.server import ServiceHost
from tests.helpers import auth
from tests.integration.test_accounts import details
from tests.refusals import refused as refused_shape

SERVICE = "parley.message.v1.MessageService"


class Probe(mgrpc.MessageServiceServicer):
    """A servicer whose calls misbehave on purpose."""

    async def SendMessage(self, request, context):
        raise RuntimeError("database password is hunter2")

    async def GetConversation(self, request, context):
        raise NotFound("no such thing", reason=Reason.CONVERSATION_NOT_FOUND)

    async def ListMessages(self, request, context):
        await asyncio.sleep(float(request.page_size) / 10)
        return mpb.ListMessagesResponse(next_page_token=current_caller().account_id)


@pytest_asyncio.fixture(loop_scope="session")
async def host(tmp_path: Path) -> AsyncIterator[tuple[ServiceHost, str]]:
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    issuer = TokenIssuer(load_private_key(tmp_path / "k.pem"), ttl_seconds=60)
    registry = CollectorRegistry()
    interceptor = ServiceInterceptor(
        verifier=TokenVerifier(load_public_keys([tmp_path / "k.pub.pem"]), RevocationList()),
        public_methods=[f"/{SERVICE}/GetConversation"],
        metrics=RpcMetrics(registry, service="probe"),
    )
    server = ServiceHost(
        name="probe",
        settings=ServerSettings(port=0, metrics_port=0, shutdown_grace_seconds=5),
        interceptors=[interceptor],
        register=lambda s: mgrpc.add_MessageServiceServicer_to_server(Probe(), s),
        service_names=[SERVICE],
        registry=registry,
    )
    await server.start()
    token = issuer.issue(account_id="acct", device_id="dev", now=time.time()).token
    yield server, token
    await server.stop()


async def test_unexpected_errors_are_generic_internal(host) -> None:
    server, token = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await mgrpc.MessageServiceStub(channel).SendMessage(
                mpb.SendMessageRequest(), metadata=auth(token)
            )
    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == "internal error"
    assert "hunter2" not in str(caught.value.debug_error_string())
    assert details(caught.value)[0] == "ERROR_REASON_INTERNAL"


async def test_domain_errors_map_and_public_methods_need_no_token(host) -> None:
    server, _ = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = mgrpc.MessageServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.GetConversation(mpb.GetConversationRequest())
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert details(caught.value)[0] == "ERROR_REASON_CONVERSATION_NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListMessages(mpb.ListMessagesRequest())
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.MarkRead(mpb.MarkReadRequest(), metadata=auth(host[1]))
        assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_health_reflection_and_metrics(host) -> None:
    server, token = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for name in ("", SERVICE):
            reply = await health.Check(health_pb2.HealthCheckRequest(service=name))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING

        async def ask():
            yield reflection_pb2.ServerReflectionRequest(list_services="")

        reflect = reflection_pb2_grpc.ServerReflectionStub(channel)
        async for answer in reflect.ServerReflectionInfo(ask()):
            names = {s.name for s in answer.list_services_response.service}
        assert {SERVICE, "grpc.health.v1.Health"} <= names

        await mgrpc.MessageServiceStub(channel).ListMessages(
            mpb.ListMessagesRequest(), metadata=auth(token)
        )

    def scrape() -> str:
        url = f"http://127.0.0.1:{server.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.read().decode()

    text = await asyncio.to_thread(scrape)
    assert 'parley_rpc_requests_total{code="OK",method="ListMessages",service="probe"} 1.0' in text
    assert "parley_rpc_duration_seconds_bucket" in text


async def test_graceful_shutdown_lets_in_flight_calls_finish(host) -> None:
    server, token = host
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = mgrpc.MessageServiceStub(channel)
        # Takes 1 s, well inside the 5 s grace.
        slow = asyncio.ensure_future(
            stub.ListMessages(mpb.ListMessagesRequest(page_size=10), metadata=auth(token))
        )
        await asyncio.sleep(0.3)
        stopping = asyncio.ensure_future(server.stop())
        await asyncio.sleep(0.1)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.ListMessages(mpb.ListMessagesRequest(), metadata=auth(token), timeout=2)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        reply = await slow
        assert reply.next_page_token == "acct"
        await stopping


PRIVILEGED = "parley.message.v1.MessageInternalService"


class Internal(igrpc.MessageInternalServiceServicer):
    async def CountMediaReferences(self, request, context):
        principal = current_principal()
        return ipb.CountMediaReferencesResponse(references={principal.name: 1})


async def test_privileged_services_take_their_credential_never_an_access_token(
    tmp_path: Path,
) -> None:
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    issuer = TokenIssuer(load_private_key(tmp_path / "k.pem"), ttl_seconds=60)
    registry = CollectorRegistry()
    service_token = new_token()
    interceptor = ServiceInterceptor(
        verifier=TokenVerifier(load_public_keys([tmp_path / "k.pub.pem"]), RevocationList()),
        public_methods=[],
        metrics=RpcMetrics(registry, service="probe"),
        privileged_services={PRIVILEGED: ServiceCredential(service_token).verify},
    )
    server = ServiceHost(
        name="probe",
        settings=ServerSettings(port=0, metrics_port=0, shutdown_grace_seconds=5),
        interceptors=[interceptor],
        register=lambda s: igrpc.add_MessageInternalServiceServicer_to_server(Internal(), s),
        service_names=[PRIVILEGED],
        registry=registry,
    )
    await server.start()
    try:
        access = issuer.issue(account_id="acct", device_id="dev", now=time.time()).token
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = igrpc.MessageInternalServiceStub(channel)
            answer = await stub.CountMediaReferences(
                ipb.CountMediaReferencesRequest(), metadata=auth(service_token)
            )
            assert dict(answer.references) == {"service": 1}
            for metadata in (auth(access), auth(new_token()), ()):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.CountMediaReferences(
                        ipb.CountMediaReferencesRequest(), metadata=metadata
                    )
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    finally:
        await server.stop()


class Refuser(mgrpc.MessageServiceServicer):
    async def SendMessage(self, request, context):
        raise ResourceExhausted(
            "rate limit send_per_device reached",
            reason=Reason.RATE_LIMITED,
            retry_after_seconds=float(request.body.decode()),
            metadata={"limit": "send_per_device"},
        )


async def test_a_rate_limit_refusal_is_held_within_its_retry_delay(tmp_path: Path) -> None:
    write_key_pair(tmp_path / "k.pem", tmp_path / "k.pub.pem")
    issuer = TokenIssuer(load_private_key(tmp_path / "k.pem"), ttl_seconds=60)
    registry = CollectorRegistry()
    interceptor = ServiceInterceptor(
        verifier=TokenVerifier(load_public_keys([tmp_path / "k.pub.pem"]), RevocationList()),
        public_methods=[],
        metrics=RpcMetrics(registry, service="probe"),
        refusal_hold_seconds=0.3,
    )
    server = ServiceHost(
        name="probe",
        settings=ServerSettings(port=0, metrics_port=0, shutdown_grace_seconds=5),
        interceptors=[interceptor],
        register=lambda s: mgrpc.add_MessageServiceServicer_to_server(Refuser(), s),
        service_names=[SERVICE],
        registry=registry,
    )
    await server.start()
    try:
        token = issuer.issue(account_id="acct", device_id="dev", now=time.time()).token
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            stub = mgrpc.MessageServiceStub(channel)

            async def refused(retry_after: float, timeout: float) -> tuple[float, float]:
                started = time.monotonic()
                with pytest.raises(grpc.aio.AioRpcError) as error:
                    await stub.SendMessage(
                        mpb.SendMessageRequest(body=str(retry_after).encode()),
                        metadata=auth(token),
                        timeout=timeout,
                    )
                took = time.monotonic() - started
                assert error.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                delay = refused_shape(error.value).retry_delay
                assert delay is not None
                return took, delay

            # Held for the configured time; RetryInfo shortened by as much.
            took, delay = await refused(2.0, timeout=5)
            assert 0.3 <= took < 1.0 and delay == pytest.approx(1.7, abs=0.01)
            # Never longer than the client was told to wait anyway.
            took, delay = await refused(0.1, timeout=5)
            assert 0.1 <= took < 0.3 and delay == pytest.approx(0.001, abs=0.001)
            # Nor past the call's deadline.
            took, delay = await refused(2.0, timeout=0.2)
            assert took < 0.2 and delay > 1.8
    finally:
        await server.stop()
