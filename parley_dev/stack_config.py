"""What the user adds to the local stack's generated config, and what the stack keeps.

``parley up --config FILE`` merges the user's YAML over the generated tree, and
``PARLEY_<SECTION>__<KEY>`` variables given to ``parley up`` reach the services
as they would in production (over the file). Either may set any key of the
typed config except the keys the stack owns: the addresses of its own backends
and services, its data paths and signing keys, and what a ``parley up`` flag
sets. Those keep the generated value and the user's is reported as ignored, or
the stack would not find its own parts. The services run in the data
directory, so relative file paths are made absolute first: those in FILE
against FILE's directory, those in variables against the current one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from pydantic import BaseModel

from parley_core.config import ENV_PREFIX, FILE_SUFFIX, NESTED, Settings
from parley_dev.layout import deep_merge

_PORTS = "set by --port-offset"
# Dotted key -> why the stack owns it (shown when a user's value is ignored).
OWNED_KEYS: dict[str, str] = {
    "mongo.uri": "the stack runs its own SecantusDB",
    "redis.url": "the stack runs its own Redis",
    "redis.cluster": "the stack runs its own Redis (parley up --redis-cluster)",
    "redis.cluster_nodes": "the stack runs its own Redis",
    "auth.private_key_file": "the stack's signing key under --data-dir",
    "auth.public_key_files": "the stack's signing key under --data-dir",
    "message.keys_target": "the stack's own svc_keys",
    "message.media_target": "the stack's own svc_media",
    "media.message_target": "the stack's own svc_message",
    "keys.message_target": "the stack's own svc_message",
    "keys.presence_target": "the stack's own svc_presence",
    "keys.media_target": "the stack's own svc_media",
    "keys.search_target": "the stack's own svc_search",
    "search.message_target": "the stack's own svc_message",
    "auth.service_token_file": "the stack's service credential under --data-dir",
    "auth.operator_tokens_file": "the stack's operator credential under --data-dir",
    **{
        f"s3.{key}": "the stack runs its own SeaweedFS"
        for key in (
            "endpoint_url",
            "public_endpoint_url",
            "region",
            "bucket",
            "access_key_id_file",
            "secret_access_key_file",
            "addressing_style",
        )
    },
    "log_format": "set by --log-format",
    **{
        f"{service}.server.{key}": _PORTS
        for service in ("keys", "message", "presence", "media", "search")
        for key in ("host", "port", "metrics_port")
    },
}
# PARLEY_CONFIG points each service at the generated file.
STACK_VARIABLE = f"{ENV_PREFIX}CONFIG"


def _lookup(tree: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = tree
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _put(tree: dict[str, Any], dotted: str, value: Any) -> None:
    *sections, leaf = dotted.split(".")
    node = tree
    for part in sections:
        child = node.get(part)
        if not isinstance(child, dict):
            return  # the user replaced the section with a scalar: validation names it
        node[part] = child = dict(child)
        node = child
    node[leaf] = value


def owned_keys_in(user: Mapping[str, Any]) -> list[str]:
    """The owned keys a user's tree sets (each is ignored)."""
    return [key for key in OWNED_KEYS if _lookup(user, key)[0]]


def merge_user_config(generated: Mapping[str, Any], user: Mapping[str, Any]) -> dict[str, Any]:
    """``user`` deep-merged over ``generated``; every owned key keeps its generated value."""
    merged = deep_merge(dict(generated), user)
    for key in OWNED_KEYS:
        present, value = _lookup(generated, key)
        if present:
            _put(merged, key, value)
    return merged


def _annotation(path: Sequence[str]) -> Any:
    """The type of a config key, or None when there is no such key."""
    node: Any = Settings
    for part in path:
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return None
        field = node.model_fields.get(part)
        if field is None:
            return None
        node = field.annotation
    return node


def _is_file_key(path: Sequence[str]) -> bool:
    annotation = _annotation(path)
    return annotation is Path or Path in get_args(annotation)


def _absolute(value: Any, base: Path) -> Any:
    if isinstance(value, str) and value:
        return str(base / value)  # an absolute value stays as it is
    if isinstance(value, list | tuple):
        return [_absolute(item, base) for item in value]
    return value


def resolve_paths(
    tree: Mapping[str, Any], base: Path, prefix: Sequence[str] = ()
) -> dict[str, Any]:
    """``tree`` with the relative values of its file keys made absolute against ``base``."""
    resolved: dict[str, Any] = {}
    for key, value in tree.items():
        path = [*prefix, str(key)]
        if isinstance(value, Mapping):
            resolved[key] = resolve_paths(value, base, path)
        elif _is_file_key(path):
            resolved[key] = _absolute(value, base)
        else:
            resolved[key] = value
    return resolved


def _config_path(name: str) -> tuple[list[str], bool]:
    """The key a variable sets, and whether it names a secret file (``_FILE``)."""
    key = name[len(ENV_PREFIX) :]
    secret_file = key.upper().endswith(FILE_SUFFIX)
    if secret_file:
        key = key[: -len(FILE_SUFFIX)]
    return key.lower().split(NESTED), secret_file


def _overlaps_owned(path: list[str]) -> bool:
    # A whole section given as JSON (PARLEY_MESSAGE__SERVER='{...}') counts too.
    return any(
        owned[: len(path)] == path or path[: len(owned)] == owned
        for owned in (key.split(".") for key in OWNED_KEYS)
    )


def service_environment(environ: Mapping[str, str], cwd: Path) -> tuple[dict[str, str], list[str]]:
    """The ``PARLEY_*`` config variables to pass to the services, and those ignored.

    A variable counts as config when it names a top-level key of Settings or has
    a ``__`` (a section): others, like the bootstrap's PARLEY_PYTHON or the
    client's PARLEY_HOME, are not meant for the services and are left out
    silently. Config variables that set an owned key are left out and returned,
    to be reported; misspelt sections pass, and validation names them.
    Relative file paths are resolved against ``cwd``.
    """
    passed: dict[str, str] = {}
    ignored: list[str] = []
    for name, value in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or name == STACK_VARIABLE:
            continue
        path, secret_file = _config_path(name)
        if path[0] not in Settings.model_fields and len(path) == 1:
            continue
        if _overlaps_owned(path):
            ignored.append(name)
        elif secret_file or _is_file_key(path):
            passed[name] = str(cwd / value) if value else value
        else:
            passed[name] = value
    return passed, ignored
