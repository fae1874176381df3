"""The whole settings tree and how it is loaded: defaults, YAML, environment,
*_FILE secrets."""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    Field,
    ValidationError,
)

from parley_core.config._section import ENV_PREFIX, FILE_SUFFIX, NESTED, ConfigError, Section
from parley_core.config.archive import ArchiveSettings
from parley_core.config.infra import (
    AuthSettings,
    MongoSettings,
    RedisSettings,
    S3Settings,
    TelemetrySettings,
    TopologySettings,
)
from parley_core.config.limits import LimitsSettings
from parley_core.config.media import MediaServiceSettings
from parley_core.config.services import (
    KeysServiceSettings,
    MessageServiceSettings,
    PresenceServiceSettings,
    SearchServiceSettings,
)


class Settings(Section):
    region: str = Field(default="local", min_length=1, max_length=32)
    """Name of the region this process serves, reported as cloud.region in traces."""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Least severity of the log records written."""
    log_format: Literal["json", "console"] = "json"
    """Log records as one JSON object a line, or plain text for a terminal."""
    mongo: MongoSettings = MongoSettings()
    """The MongoDB (SecantusDB) database."""
    redis: RedisSettings = RedisSettings()
    """Redis: fan-out, presence, rate limits and caches."""
    auth: AuthSettings = AuthSettings()
    """Access and refresh tokens."""
    keys: KeysServiceSettings = KeysServiceSettings()
    """svc_keys: accounts, devices and keys."""
    message: MessageServiceSettings = MessageServiceSettings()
    """svc_message: conversations, messages, delivery streams and push."""
    presence: PresenceServiceSettings = PresenceServiceSettings()
    """svc_presence: online state, last seen and contacts."""
    media: MediaServiceSettings = MediaServiceSettings()
    """svc_media: encrypted attachments on S3-compatible storage."""
    search: SearchServiceSettings = SearchServiceSettings()
    """svc_search: the opt-in server blind index over encrypted history."""
    s3: S3Settings = S3Settings()
    """The S3-compatible object store of the region's media."""
    archive: ArchiveSettings = ArchiveSettings()
    """svc_message's history archive on the `s3` section's store."""
    telemetry: TelemetrySettings = TelemetrySettings()
    """Traces (metrics are per server)."""
    topology: TopologySettings = TopologySettings()
    """The multi-region topology file."""
    limits: LimitsSettings = LimitsSettings()
    """Abuse limits (rate limits) of every service."""


def _set_path(tree: dict[str, Any], path: list[str], value: Any) -> None:
    node = tree
    for part in path[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"config key {'.'.join(path)}: {part} is not a section")
        node = child
    node[path[-1]] = value


def _parse_env_value(raw: str) -> Any:
    # Lists and sections come as JSON; scalars stay strings for pydantic to coerce.
    stripped = raw.strip()
    if stripped[:1] in ("[", "{"):
        try:
            return json.loads(stripped)
        except json.JSONDecodeError:
            return raw
    return raw


def _env_overrides(environ: Mapping[str, str]) -> list[tuple[list[str], Any]]:
    overrides: list[tuple[list[str], Any]] = []
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == f"{ENV_PREFIX}CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key.upper().endswith(FILE_SUFFIX):
            key = key[: -len(FILE_SUFFIX)]
            try:
                value: Any = Path(raw).read_text().strip()
            except OSError as exc:
                dotted = key.replace(NESTED, ".")
                raise ConfigError(
                    f"config key {dotted}: cannot read secret file {raw}: {exc}"
                ) from None
        else:
            value = _parse_env_value(raw)
        overrides.append((key.split(NESTED), value))
    return overrides


def load_settings(
    config_file: Path | str | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build Settings from the YAML file and the environment, or fail naming the key."""
    env = os.environ if environ is None else environ
    path = config_file or env.get(f"{ENV_PREFIX}CONFIG")
    tree = read_config_file(path) if path else {}
    return settings_from_tree(tree, env)


def read_config_file(path: Path | str) -> dict[str, Any]:
    """The YAML config file as a tree, unchecked; a ConfigError if it is no mapping."""
    try:
        loaded = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path}: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"config file {path}: the top level must be a mapping")
    return loaded


def settings_from_tree(tree: Mapping[str, Any], environ: Mapping[str, str]) -> Settings:
    """Settings from a loaded config tree with ``environ``'s overrides applied, or
    a ConfigError naming the key (what a service started with them would do)."""
    merged: dict[str, Any] = copy.deepcopy(dict(tree))
    for key_path, value in _env_overrides(environ):
        _set_path(merged, key_path, value)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"invalid configuration: {problems}") from None
