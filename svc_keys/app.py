"""Composition root of svc_keys: builds every dependency once and runs the host."""

from __future__ import annotations

import argparse
from pathlib import Path

from parley.keys.v1 import accounts_pb2_grpc
from parley_core.auth.tokens import TokenIssuer, load_private_key
from parley_core.config import ConfigError, Settings, load_settings
from parley_core.logging import configure_logging
from parley_core.rpc.server import ServiceHost, run
from parley_core.runtime import open_runtime
from svc_keys.domain.accounts import AccountsHandler
from svc_keys.servicer.accounts import PUBLIC_METHODS, SERVICE_NAME, AccountServicer
from svc_keys.storage.accounts import AccountStore


async def build(settings: Settings) -> ServiceHost:
    if settings.auth.private_key_file is None:
        raise ConfigError("auth.private_key_file: svc_keys signs tokens and needs the private key")
    try:
        signing_key = load_private_key(settings.auth.private_key_file)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"auth.private_key_file: {exc}") from None
    runtime = await open_runtime(settings, service="keys")
    store = AccountStore(runtime.db)
    await store.ensure_indexes()
    await runtime.start_revocation_feed()
    accounts = AccountsHandler(
        store,
        TokenIssuer(signing_key, ttl_seconds=settings.auth.access_token_ttl_seconds),
        runtime.revocation_store,
        max_devices=settings.keys.max_devices_per_account,
        refresh_ttl_seconds=settings.auth.refresh_token_ttl_seconds,
    )
    servicer = AccountServicer(accounts)
    return ServiceHost(
        name="svc_keys",
        settings=settings.keys.server,
        interceptors=[runtime.interceptor(public_methods=PUBLIC_METHODS)],
        register=lambda server: accounts_pb2_grpc.add_AccountServiceServicer_to_server(
            servicer, server
        ),
        service_names=[SERVICE_NAME],
        registry=runtime.registry,
        on_stop=[runtime.close],
    )


async def serve(settings: Settings) -> None:
    host = await build(settings)
    await host.start()
    await host.serve_until_signalled()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="svc_keys", description="Parley accounts and keys")
    parser.add_argument("--config", type=Path, help="YAML config file (or PARLEY_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        raise SystemExit(f"svc_keys: {exc}") from None
    configure_logging(service="svc_keys", level=settings.log_level, fmt=settings.log_format)
    run(lambda: serve(settings), event_loop=settings.keys.server.event_loop)
