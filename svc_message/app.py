"""Composition root of svc_message: builds every dependency once and runs the host."""

from __future__ import annotations

import time

from parley_core.config import Settings
from parley_core.errors import Reason, Unavailable
from parley_core.rpc.server import ServiceHost
from parley_core.runtime import open_runtime, service_main
from svc_message.domain.conversations import ConversationsHandler
from svc_message.domain.delivery import AckBatcher, DeliveryService, Hub
from svc_message.domain.messages import MessagesHandler
from svc_message.domain.projection import Projector
from svc_message.domain.sending import SendPipeline
from svc_message.metrics import MessageMetrics
from svc_message.peers.keys import AccountDirectory
from svc_message.servicer.convert import ProtoEventCodec
from svc_message.servicer.messages import MessageUnaryServicer
from svc_message.servicer.service import SERVICE_NAME, register
from svc_message.servicer.stream import StreamServicer
from svc_message.storage.conversations import ConversationStore
from svc_message.storage.doorbell import Doorbell
from svc_message.storage.messages import MessageStore
from svc_message.storage.projection import ProjectorStore
from svc_message.storage.recent import RecentCache


async def build(settings: Settings) -> ServiceHost:
    config = settings.message
    clock = time.time
    runtime = await open_runtime(settings, service="message")
    conversation_store = ConversationStore(runtime.db)
    message_store = MessageStore(runtime.db)
    projector_store = ProjectorStore(runtime.db)
    await conversation_store.ensure_indexes()
    await message_store.ensure_indexes()
    await projector_store.ensure_indexes()

    codec = ProtoEventCodec()
    hub: Hub
    doorbell = Doorbell(
        runtime.redis,
        on_event=lambda account_id, payload: hub.dispatch(account_id, payload),
        on_reconnect=lambda: hub.resync_all(),
    )
    hub = Hub(doorbell, codec)
    accounts = AccountDirectory(config.keys_target)
    recent = RecentCache(
        runtime.redis,
        capacity=config.recent_cache_messages,
        ttl_seconds=config.recent_cache_ttl_seconds,
    )
    conversations = ConversationsHandler(conversation_store, recent, accounts, doorbell, codec)
    projector = Projector(
        conversation_store,
        message_store,
        projector_store,
        heartbeat_seconds=config.projector_heartbeat_seconds,
        interval_seconds=config.projector_interval_seconds,
        clock=clock,
    )
    pipeline = SendPipeline(
        message_store,
        projector,
        recent,
        doorbell,
        codec,
        batch_max=config.send_batch_max,
        clock=clock,
    )
    messages = MessagesHandler(conversations, message_store, recent, pipeline, codec)
    delivery = DeliveryService(
        hub,
        conversation_store,
        conversations,
        message_store,
        codec,
        queue_limit=config.stream_queue_events,
        queue_bytes=config.stream_queue_bytes,
        replay_page_size=config.replay_page_size,
        clock=clock,
    )
    acks = AckBatcher(
        conversation_store,
        conversations,
        doorbell,
        codec,
        flush_seconds=config.ack_flush_seconds,
        cursor_flush_seconds=config.cursor_flush_seconds,
        clock=clock,
    )
    runtime.registry.register(
        MessageMetrics(
            hub=hub, pipeline=pipeline, projector=projector, recent=recent, doorbell=doorbell
        )
    )

    await runtime.start_revocation_feed(on_revoked=hub.device_revoked)
    runtime.spawn(doorbell.run())
    await projector.start()
    runtime.spawn(projector.run())
    runtime.spawn(pipeline.run())
    runtime.spawn(recent.run())
    runtime.spawn(acks.run())

    unary = MessageUnaryServicer(
        conversations, messages, max_body_bytes=config.max_body_bytes, clock=clock
    )
    stream = StreamServicer(delivery, acks, codec)

    async def stop() -> None:
        await acks.flush()
        await projector.drain()
        await accounts.close()
        await runtime.close()

    return ServiceHost(
        name="svc_message",
        settings=config.server,
        interceptors=[runtime.interceptor(public_methods=())],
        register=lambda server: register(server, unary, stream),
        service_names=[SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[stop],
        on_draining=[
            lambda: hub.close_all(
                Unavailable(
                    "this server is shutting down; reconnect to resume",
                    reason=Reason.SHUTTING_DOWN,
                )
            )
        ],
    )


def main(argv: list[str] | None = None) -> None:
    service_main(
        argv,
        name="svc_message",
        description="Parley messaging",
        build=build,
        server=lambda settings: settings.message.server,
    )
