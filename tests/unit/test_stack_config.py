"""The user's settings over the local stack's generated config (parley up --config)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from parley_core.config import ConfigError, Settings
from parley_dev.cli import build_parser
from parley_dev.stack import LocalStack, StackPorts
from parley_dev.stack_config import (
    OWNED_KEYS,
    merge_user_config,
    owned_keys_in,
    resolve_paths,
    service_environment,
)

GENERATED: dict[str, Any] = {
    "log_format": "json",
    "mongo": {"uri": "mongodb://127.0.0.1:27117/", "database": "parley"},
    "keys": {"server": {"host": "127.0.0.1", "port": 7101, "metrics_port": 9101}},
    "message": {
        "server": {"host": "127.0.0.1", "port": 7102, "metrics_port": 9102},
        "keys_target": "127.0.0.1:7101",
    },
}


def test_the_user_tree_is_deep_merged_and_wins() -> None:
    user = {
        "log_level": "DEBUG",
        "mongo": {"database": "mine"},
        "message": {
            "max_body_bytes": 1000,
            "server": {"shutdown_grace_seconds": 3},
            "push": {"webhook": {"url": "https://push.example/"}},
        },
    }
    merged = merge_user_config(GENERATED, user)
    assert merged == {
        "log_format": "json",
        "log_level": "DEBUG",
        "mongo": {"uri": "mongodb://127.0.0.1:27117/", "database": "mine"},
        "keys": GENERATED["keys"],
        "message": {
            "server": {
                "host": "127.0.0.1",
                "port": 7102,
                "metrics_port": 9102,
                "shutdown_grace_seconds": 3,
            },
            "keys_target": "127.0.0.1:7101",
            "max_body_bytes": 1000,
            "push": {"webhook": {"url": "https://push.example/"}},
        },
    }
    assert owned_keys_in(user) == []


def test_owned_keys_keep_the_generated_values_and_are_reported() -> None:
    user = {
        "log_format": "console",
        "mongo": {"uri": "mongodb://elsewhere:27017/", "database": "mine"},
        "message": {"server": {"port": 1, "event_loop": "asyncio"}, "keys_target": "x:1"},
    }
    merged = merge_user_config(GENERATED, user)
    assert merged["log_format"] == "json"
    assert merged["mongo"] == {"uri": "mongodb://127.0.0.1:27117/", "database": "mine"}
    assert merged["message"]["server"] == {
        **GENERATED["message"]["server"],
        "event_loop": "asyncio",
    }
    assert merged["message"]["keys_target"] == "127.0.0.1:7101"
    assert owned_keys_in(user) == [
        "mongo.uri",
        "message.keys_target",
        "log_format",
        "message.server.port",
    ]
    # The generated tree itself is untouched.
    assert GENERATED["message"]["server"]["port"] == 7102


def test_every_owned_key_is_in_the_typed_config_and_in_the_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for dotted in OWNED_KEYS:
        model: Any = Settings
        for part in dotted.split("."):
            model = model.model_fields[part].annotation
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for dotted in OWNED_KEYS:
        service, server, leaf = dotted.rpartition(".server.")
        listed = f"{service}.server" in help_text and leaf in help_text
        assert dotted in help_text or (server and listed), dotted


def stack(
    tmp_path: Path, user: dict[str, Any], environ: dict[str, str] | None = None
) -> LocalStack:
    return LocalStack(
        root=tmp_path, ports=StackPorts.free(), user_config=user, service_environ=environ
    )


def test_the_stack_validates_the_merged_config_and_names_a_bad_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"message\.push\.webhook\.uri: Extra inputs"):
        stack(tmp_path, {"message": {"push": {"webhook": {"uri": "https://x/"}}}})
    with pytest.raises(ConfigError, match=r"presence\.max_contacts: Input should be"):
        stack(tmp_path, {"presence": {"max_contacts": "lots"}})
    with pytest.raises(ConfigError, match=r"keys\.max_devices_per_account"):
        stack(tmp_path, {}, {"PARLEY_KEYS__MAX_DEVICES_PER_ACCOUNT": "0"})
    assert not (tmp_path / "parley.yaml").exists()


def test_the_stack_runs_with_the_user_settings_and_its_own_addresses(tmp_path: Path) -> None:
    secret = tmp_path / "webhook.secret"
    secret.write_text("s" * 20 + "\n")
    local = stack(
        tmp_path,
        {
            "mongo": {"uri": "mongodb://elsewhere:1/"},
            "message": {"max_body_bytes": 100, "push": {"webhook": {"url": "http://h/p"}}},
        },
        {"PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE": str(secret)},
    )
    assert local.settings.mongo.uri == local.mongo_uri
    assert local.settings.message.max_body_bytes == 100
    assert local.settings.message.push.webhook.url == "http://h/p"
    assert local.settings.message.push.webhook.secret == "s" * 20
    environment = local.process("svc_message-0").env
    assert environment is not None
    assert environment["PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE"] == str(secret)
    assert environment["PARLEY_CONFIG"] == str(local.config_path)
    local.prepare_files()
    assert local.config_path.stat().st_mode & 0o077 == 0
    assert "s" * 20 not in local.config_path.read_text()


def test_the_stack_shares_one_service_credential_made_once(tmp_path: Path) -> None:
    local = stack(
        tmp_path,
        {"auth": {"service_token_file": "/elsewhere"}, "message": {"media_target": "x:1"}},
    )
    assert local.settings.auth.service_token_file == local.service_token_path
    assert local.settings.message.media_target == local.media_target
    assert local.media_target == f"127.0.0.1:{local.ports.media}"
    local.prepare_files()
    token = local.service_token
    assert len(token) >= 32
    assert local.service_token_path.stat().st_mode & 0o077 == 0
    # Kept across restarts, like the signing keys.
    local.prepare_files()
    assert local.service_token == token


def test_environment_config_passes_and_owned_or_foreign_variables_do_not() -> None:
    passed, ignored = service_environment(
        {
            "PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE": "secrets/webhook",
            "PARLEY_MESSAGE__PUSH__FCM__SERVICE_ACCOUNT_FILE": "/etc/fcm.json",
            "PARLEY_MESSAGE__PUSH__APNS__CA_FILE": "ca.pem",
            "PATH": "/usr/bin",
            "PARLEY_CONFIG": "/etc/parley.yaml",
            "PARLEY_PYTHON": "python3.11",
            "PARLEY_HOME": "/home/me/.parley-cli",
            "PARLEY_LOG_LEVEL": "DEBUG",
            "PARLEY_REGION": "eu",
            "PARLEY_MESSAGE__MAX_BODY_BYTES": "100",
            "PARLEY_MESSAGE__PUSH__APNS__TEAM_ID": "T1",
            "PARLEY_MESAGE__TYPO": "1",
            "PARLEY_MONGO__URI": "mongodb://elsewhere/",
            "PARLEY_AUTH__PRIVATE_KEY_FILE_FILE": "/run/secret",
            "PARLEY_PRESENCE__SERVER": '{"port": 1}',
            "PARLEY_PRESENCE__SERVER__EVENT_LOOP": "asyncio",
            "PARLEY_LOG_FORMAT": "console",
        },
        Path("/work/here"),
    )
    assert passed == {
        # The services run in the data directory: file paths become absolute.
        "PARLEY_MESSAGE__PUSH__WEBHOOK__SECRET_FILE": "/work/here/secrets/webhook",
        "PARLEY_MESSAGE__PUSH__FCM__SERVICE_ACCOUNT_FILE": "/etc/fcm.json",
        "PARLEY_MESSAGE__PUSH__APNS__CA_FILE": "/work/here/ca.pem",
        "PARLEY_LOG_LEVEL": "DEBUG",
        "PARLEY_REGION": "eu",
        "PARLEY_MESSAGE__MAX_BODY_BYTES": "100",
        "PARLEY_MESSAGE__PUSH__APNS__TEAM_ID": "T1",
        # Passed so that validation rejects it by name.
        "PARLEY_MESAGE__TYPO": "1",
        "PARLEY_PRESENCE__SERVER__EVENT_LOOP": "asyncio",
    }
    assert ignored == [
        "PARLEY_AUTH__PRIVATE_KEY_FILE_FILE",
        "PARLEY_LOG_FORMAT",
        "PARLEY_MONGO__URI",
        "PARLEY_PRESENCE__SERVER",
    ]


def test_relative_file_paths_of_the_user_file_are_made_absolute() -> None:
    user = {
        "region": "here",
        "topology": {"path": "topology.json"},
        "message": {
            "push": {
                "apns": {"private_key_file": "keys/AuthKey.p8", "ca_file": "/etc/ca.pem"},
                "fcm": {"service_account_file": None},
            }
        },
    }
    assert resolve_paths(user, Path("/home/me/parley")) == {
        "region": "here",
        # Typed str, not Path: left as given.
        "topology": {"path": "topology.json"},
        "message": {
            "push": {
                "apns": {
                    "private_key_file": "/home/me/parley/keys/AuthKey.p8",
                    "ca_file": "/etc/ca.pem",
                },
                "fcm": {"service_account_file": None},
            }
        },
    }
