"""`parley up --config` and PARLEY_* variables reach the running services."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
import yaml

from parley.keys.v1 import accounts_pb2_grpc as kgrpc
from parley.message.v1 import messages_pb2 as mpb
from parley.message.v1 import messages_pb2_grpc as mgrpc
from parley_dev.stack import StackPorts
from tests.helpers import wait_until
from tests.parley_up import PARLEY, free_offset, parley_environment, parley_up
from tests.pushservers import WebhookServer
from tests.users import direct, send, sign_up

MAX_BODY_BYTES = 64


async def test_a_bad_setting_stops_parley_up_before_it_starts_anything(tmp_path: Path) -> None:
    settings = tmp_path / "mine.yaml"
    settings.write_text(yaml.safe_dump({"message": {"max_body_bytez": 10}}))
    data = tmp_path / "data"
    for config, environment, key in [
        (settings, {}, "message.max_body_bytez"),
        (None, {"PARLEY_PRESENCE__MAX_CONTACTS": "lots"}, "presence.max_contacts"),
    ]:
        child = await asyncio.create_subprocess_exec(
            *PARLEY,
            "up",
            *(["--config", str(config)] if config else []),
            *("--data-dir", str(data), "--port-offset", str(free_offset())),
            env=parley_environment(**environment),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        output, _ = await asyncio.wait_for(child.communicate(), 60)
        assert child.returncode == 2, output.decode()
        assert key in output.decode()
    assert not data.exists()


@pytest.mark.slow
async def test_settings_from_the_file_and_the_environment_reach_the_services(
    tmp_path: Path,
) -> None:
    offset = free_offset()
    ports = StackPorts.defaults(1, offset=offset)
    async with WebhookServer.start(tmp_path / "webhook") as webhook:
        # The push provider and a limit come from the file, the webhook's
        # secret from a *_FILE variable as in production (relative to where
        # parley up runs, not to the services' data directory). The file's
        # mongo.uri and the variable's redis.url would point the stack away
        # from its own backends.
        (tmp_path / "conf").mkdir()
        (tmp_path / "conf" / "webhook.secret").write_text(webhook.secret + "\n")
        settings = tmp_path / "conf" / "parley.yaml"
        settings.write_text(
            yaml.safe_dump(
                {
                    "mongo": {"uri": "mongodb://127.0.0.1:1/"},
                    "message": {
                        "max_body_bytes": MAX_BODY_BYTES,
                        "push": {"webhook": {"url": webhook.url}, "collapse_seconds": 0.2},
                    },
                }
            )
        )
        environment = {
            "PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE": "webhook.secret",
            "PARLEY_MESSAGE__PUSH__POLL_SECONDS": "0.2",
            "PARLEY_REDIS__URL": "redis://127.0.0.1:1/0",
        }
        args = ["--config", str(settings), "--data-dir", str(tmp_path / "data")]
        args += ["--port-offset", str(offset)]
        async with parley_up(args, environment=environment, cwd=tmp_path / "conf") as lines:
            output = "".join(lines)
            assert f"ignoring mongo.uri from {settings}" in output
            assert "ignoring PARLEY_REDIS__URL" in output
            async with (
                grpc.aio.insecure_channel(f"127.0.0.1:{ports.keys}") as keys_channel,
                grpc.aio.insecure_channel(f"127.0.0.1:{ports.message[0]}") as message_channel,
            ):
                keys = kgrpc.AccountServiceStub(keys_channel)
                messages = mgrpc.MessageServiceStub(message_channel)
                alice, bob = await sign_up(keys), await sign_up(keys)
                await messages.RegisterPushToken(
                    mpb.RegisterPushTokenRequest(
                        provider=mpb.PUSH_PROVIDER_WEBHOOK, token="bob-token"
                    ),
                    metadata=bob.md,
                )
                conversation = await direct(messages, alice, bob)
                with pytest.raises(grpc.aio.AioRpcError) as too_long:
                    await send(messages, alice, conversation, b"x" * (MAX_BODY_BYTES + 1))
                assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                sent = await send(messages, alice, conversation, b"x" * MAX_BODY_BYTES)

                async def pushed() -> bool:
                    return any(r.token == "bob-token" for r in webhook.delivered)

                # Delivered means the receiver checked the signature made with the secret.
                await wait_until(pushed, timeout=30, what="the webhook push to bob")
                (push,) = [r for r in webhook.delivered if r.token == "bob-token"]
                assert push.json["message_id"] == sent.message_id
