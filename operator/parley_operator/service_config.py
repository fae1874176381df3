"""The config file each service is started with, as the operator writes it.

One ``parley_core.config`` tree per service: the spec's extra ``config`` under
the operator's own keys (ports, addresses of the other services, where the
mounted secret files are). Secrets are never in it, only the paths of the
files Kubernetes mounts from them; the operator does not import parley_core,
and tests/unit/test_operator_manifests.py loads every file with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from parley_operator.spec import GRPC_PORTS, METRICS_PORTS, RegionSpec
from parley_operator.topology import TOPOLOGY_FILE, service_address

CONFIG_DIR = "/etc/parley/config"
TOPOLOGY_DIR = "/etc/parley/topology"
SECRETS_DIR = "/var/run/secrets/parley"
# Secret files the config points at (auth.*_file, s3.*_file), each in its own volume.
SERVICE_TOKEN_FILE = f"{SECRETS_DIR}/service-token/token"
OPERATOR_TOKENS_FILE = f"{SECRETS_DIR}/operator-tokens/tokens"
S3_ACCESS_KEY_ID_FILE = f"{SECRETS_DIR}/s3/access_key_id"
S3_SECRET_ACCESS_KEY_FILE = f"{SECRETS_DIR}/s3/secret_access_key"


def _deep_merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in top.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def service_config(region: RegionSpec, service: str) -> dict[str, Any]:
    """The parley_core.config tree one service is started with.

    The spec's extra ``config`` goes first and the operator's own keys on top,
    so an override cannot move the ports the probes and Services point at.
    Secrets are not in it: they come as files through ``*_FILE`` variables.
    """
    spec = region.services[service]
    tokens_dir = f"{SECRETS_DIR}/tokens"
    auth: dict[str, Any] = {
        "public_key_files": [f"{tokens_dir}/{key}" for key in region.tokens.verification_keys]
    }
    if service == "keys":
        auth["private_key_file"] = f"{tokens_dir}/{region.tokens.signing_key}"
    section: dict[str, Any] = {
        "server": {
            "host": "0.0.0.0",
            "port": GRPC_PORTS[service],
            "metrics_port": METRICS_PORTS[service],
            "shutdown_grace_seconds": spec.shutdown_grace_seconds,
        }
    }
    if region.auth.service_token is not None:
        auth["service_token_file"] = SERVICE_TOKEN_FILE
    if service == "keys":
        # The account erasure job calls the other services' internal RPCs.
        section["message_target"] = service_address(region, "message")
        section["presence_target"] = service_address(region, "presence")
        section["media_target"] = (
            service_address(region, "media") if "media" in region.services else None
        )
        section["search_target"] = (
            service_address(region, "search") if "search" in region.services else None
        )
    if service == "message":
        section["keys_target"] = service_address(region, "keys")
        if "media" in region.services:
            section["media_target"] = service_address(region, "media")
        # Only the values the spec sets, so a region without them keeps the
        # service's defaults (and its config hash).
        replication = region.replication.config()
        if replication:
            section["replication"] = replication
    owned: dict[str, Any] = {
        "region": region.region,
        "log_level": region.log_level,
        "log_format": "json",
        "mongo": {"database": region.mongo_database},
        "auth": auth,
        # The mounted topology ConfigMap, which the services reload in place.
        "topology": {"path": f"{TOPOLOGY_DIR}/{TOPOLOGY_FILE}"},
        service: section,
    }
    if service == "message":
        # svc_message's history archive lives in the region's bucket; without
        # one its archiver stays off (history then stays in MongoDB).
        if region.s3 is not None:
            owned["s3"] = _s3_settings(region)
        else:
            owned["archive"] = {"enabled": False}
    if service == "search":
        section["message_target"] = service_address(region, "message")
    if service == "media":
        section.update(_media_settings(region))
        owned["s3"] = _s3_settings(region)
        if region.auth.operator_tokens is not None:
            auth["operator_tokens_file"] = OPERATOR_TOKENS_FILE
    if region.redis_cluster:
        # Only when on, so the config (and its hash) of other regions is unchanged.
        owned["redis"] = {"cluster": True, "cluster_nodes": list(region.redis_cluster_nodes)}
    return _deep_merge(region.extra_config, owned)


def _media_settings(region: RegionSpec) -> dict[str, Any]:
    """svc_media's section beyond its server: its peer, and what the spec sets of it."""
    media = region.media
    settings: dict[str, Any] = {"message_target": service_address(region, "message")}
    if media is None:
        return settings
    optional = {
        "max_object_bytes": media.max_object_bytes,
        "gc_grace_seconds": media.gc_grace_seconds,
    }
    settings.update({key: value for key, value in optional.items() if value is not None})
    quotas = {
        "daily_upload_bytes": media.quotas.daily_upload_bytes,
        "stored_bytes": media.quotas.stored_bytes,
    }
    quotas = {key: value for key, value in quotas.items() if value is not None}
    if quotas:
        settings["quotas"] = quotas
    tiers = {
        "infrequent_after_days": media.tiers.infrequent_after_days,
        "archive_after_days": media.tiers.archive_after_days,
        "min_object_bytes": media.tiers.min_object_bytes,
    }
    tiers = {key: value for key, value in tiers.items() if value is not None}
    if tiers:
        settings["tiers"] = tiers
    return settings


def _s3_settings(region: RegionSpec) -> dict[str, Any]:
    """The s3 section: where the bucket is, and the mounted key files (never the keys)."""
    s3 = region.s3
    if s3 is None:
        return {}
    settings: dict[str, Any] = {"bucket": s3.bucket, "addressing_style": s3.addressing_style}
    optional = {
        "endpoint_url": s3.endpoint,
        "public_endpoint_url": s3.public_endpoint,
        "region": s3.region,
    }
    settings.update({key: value for key, value in optional.items() if value})
    if s3.credentials is not None:
        settings["access_key_id_file"] = S3_ACCESS_KEY_ID_FILE
        settings["secret_access_key_file"] = S3_SECRET_ACCESS_KEY_FILE
    return settings
