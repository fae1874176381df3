from __future__ import annotations

from pathlib import Path

import pytest

from parley_core.config import (
    ANSWERED_BODY_BYTES,
    REQUEST_HEADROOM_BYTES,
    ConfigError,
    MessageServiceSettings,
    load_settings,
)


def test_defaults_load_without_a_file() -> None:
    settings = load_settings(environ={})
    assert settings.message.max_body_bytes == 65536
    assert settings.mongo.database == "parley"


def test_yaml_then_environment_then_secret_files(tmp_path: Path) -> None:
    config = tmp_path / "parley.yaml"
    config.write_text("mongo:\n  database: fromyaml\n  uri: mongodb://yaml:1/\nregion: eu\n")
    secret = tmp_path / "uri"
    secret.write_text("mongodb://secret:27017/\n")
    settings = load_settings(
        config,
        environ={
            "PARLEY_MONGO__DATABASE": "fromenv",
            "PARLEY_MONGO__URI_FILE": str(secret),
            "PARLEY_MESSAGE__SERVER__PORT": "7300",
            "PARLEY_AUTH__PUBLIC_KEY_FILES": '["/a.pem", "/b.pem"]',
        },
    )
    assert settings.region == "eu"
    assert settings.mongo.database == "fromenv"
    assert settings.mongo.uri == "mongodb://secret:27017/"
    assert settings.message.server.port == 7300
    assert [str(p) for p in settings.auth.public_key_files] == ["/a.pem", "/b.pem"]


def test_svc_message_reads_a_body_too_large_to_answer_it() -> None:
    bounds = MessageServiceSettings.model_fields["max_body_bytes"].metadata
    largest_max_body = max(bound.le for bound in bounds if hasattr(bound, "le"))
    assert largest_max_body * 4 <= ANSWERED_BODY_BYTES, "as documented in messages.proto"
    settings = load_settings(environ={})
    assert settings.message.receive_limit_bytes == ANSWERED_BODY_BYTES + REQUEST_HEADROOM_BYTES
    # The keys and presence services keep the server setting as it is.
    assert settings.keys.server.max_receive_message_bytes == 1 << 20
    raised = load_settings(environ={"PARLEY_MESSAGE__SERVER__MAX_RECEIVE_MESSAGE_BYTES": "9000000"})
    assert raised.message.receive_limit_bytes == 9_000_000


@pytest.mark.parametrize(
    ("environ", "key"),
    [
        ({"PARLEY_MESSAGE__SERVER__PORT": "seventy"}, "message.server.port"),
        ({"PARLEY_MESSAGE__MAX_BODY_BYTES": "0"}, "message.max_body_bytes"),
        ({"PARLEY_MONGO__URI": "postgres://x"}, "mongo.uri"),
        ({"PARLEY_REDIS__URL": "http://x"}, "redis.url"),
        ({"PARLEY_LOG_LEVEL": "LOUD"}, "log_level"),
        ({"PARLEY_MESSAGE__NO_SUCH_KEY": "1"}, "message.no_such_key"),
        ({"PARLEY_MONGO__URI_FILE": "/nonexistent/secret"}, "mongo.uri"),
    ],
)
def test_a_bad_value_fails_naming_the_key(environ: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_settings(environ=environ)


def test_a_broken_yaml_file_is_a_config_error(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("mongo: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml"):
        load_settings(config, environ={})
