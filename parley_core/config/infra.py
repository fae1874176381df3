"""Settings of the servers and stores every service shares: gRPC server, MongoDB,
Redis, S3, credentials, tracing, telemetry and the region topology."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from parley_core.config._section import Section


class ServerSettings(Section):
    host: str = "127.0.0.1"
    """Address the gRPC server and the metrics endpoint bind to; 0.0.0.0 is every interface."""
    port: int = Field(default=0, ge=0, le=65535)
    """gRPC port; 0 picks a free port (tests), and the bound port is logged and reported."""
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    """Port of the Prometheus /metrics endpoint; unset disables it."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0, le=600)
    """Seconds in-flight RPCs may still run after a shutdown signal before they are cancelled."""
    max_receive_message_bytes: int = Field(default=1 << 20, ge=1024, le=64 << 20)
    """Largest request message the server reads, in bytes; a larger one gets gRPC's own
    RESOURCE_EXHAUSTED with no details before the service sees it. svc_message reads at least
    enough to answer a body of up to 4 MiB itself (BODY_TOO_LARGE naming body)."""
    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The asyncio event loop implementation the process runs on."""


class MongoSettings(Section):
    uri: str = "mongodb://127.0.0.1:27017/"
    """MongoDB (or SecantusDB) connection string, mongodb:// or mongodb+srv://; retryWrites is
    always off whatever it says. It may hold a password: give it through a _FILE secret."""
    database: str = Field(default="parley", min_length=1, max_length=60)
    """Name of the database holding every collection of the services."""
    server_selection_timeout_ms: int = Field(default=5000, ge=100)
    """Milliseconds an operation waits for a usable server before it fails."""

    @field_validator("uri")
    @classmethod
    def _mongo_scheme(cls, value: str) -> str:
        if not value.startswith(("mongodb://", "mongodb+srv://")):
            raise ValueError("must start with mongodb:// or mongodb+srv://")
        return value


class RedisSettings(Section):
    url: str = "redis://127.0.0.1:6379/0"
    """Redis connection URL (redis://, rediss:// for TLS, or unix://); it may hold a password: give
    it through a _FILE secret. With cluster on, the address of one node of the cluster."""
    socket_timeout_seconds: float = Field(default=2.0, gt=0)
    """Seconds a Redis connect or command may take before it fails (timeouts are not retried)."""
    cluster: bool = False
    """Redis is a Redis Cluster (url and cluster_nodes name some of its nodes; the client
    finds the rest): keys that a script touches together share a hash tag, and channels are sharded
    (SPUBLISH/SSUBSCRIBE). Off, a single server (or a primary with replicas) is used with the same
    key names as before clusters were supported. Every service of a region must agree."""
    cluster_nodes: tuple[str, ...] = ()
    """More nodes of the cluster as host:port, tried at start when the node of url does not
    answer (same credentials and TLS as url). Only with cluster on."""
    cluster_presence_shards: int = Field(default=128, ge=1, le=16384)
    """Hash tags the presence records of a Redis Cluster are spread over: each has its own
    due-for-sweep and due-for-save sets in the slot of its accounts, so the presence sweeper visits
    every one. More spread the load over more masters; changing it forgets who is online (devices
    come back with their next heartbeat or stream refresh)."""

    @field_validator("url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must start with redis://, rediss:// or unix://")
        return value

    @field_validator("cluster_nodes")
    @classmethod
    def _host_ports(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for node in value:
            host, _, port = node.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"{node!r} is not host:port")
        return value

    @model_validator(mode="after")
    def _cluster_url(self) -> RedisSettings:
        if self.cluster:
            if self.url.startswith("unix://"):
                raise ValueError("url: a Redis Cluster is reached over TCP, not unix://")
            if urlsplit(self.url).path.strip("/") not in ("", "0"):
                raise ValueError("url: a Redis Cluster has database 0 only")
        elif self.cluster_nodes:
            raise ValueError("cluster_nodes: only with cluster on")
        return self


class AuthSettings(Section):
    # Several keys allow rotation: sign with the new key while the old one still verifies.
    public_key_files: tuple[Path, ...] = ()
    """PEM Ed25519 public keys that may have signed access tokens; every service needs at least one.
    List several to rotate keys."""
    private_key_file: Path | None = None
    """PEM Ed25519 private key that signs access tokens; only svc_keys (the issuer) needs it."""
    access_token_ttl_seconds: int = Field(default=3600, ge=30, le=86400)
    """Lifetime of an access token in seconds; also how long a revocation is remembered."""
    refresh_token_ttl_seconds: int = Field(default=30 * 86400, ge=300)
    """Lifetime of a device's refresh token in seconds."""
    revocation_poll_seconds: float = Field(default=5.0, gt=0, le=300)
    """Seconds between polls of MongoDB for token revocations; revocations arrive over Redis at
    once, so this bounds how late one is when Redis is down."""
    service_token_file: Path | None = None
    """File holding the deployment's service credential (a random secret of at least 32
    characters, the same for every service): services send it on internal RPCs and require it
    there. Without it, internal RPCs refuse every call."""
    operator_tokens_file: Path | None = None
    """File listing operator credentials for administrative RPCs, one `<name> <sha256 hex of the
    token>` per line; the name is what audit logs record. Without it, no one can call them."""


class S3Settings(Section):
    """The S3-compatible object store holding media (AWS S3, MinIO, Ceph RGW, SeaweedFS), one
    bucket per region. Credentials come from files only (Kubernetes Secrets)."""

    endpoint_url: str = ""
    """http(s) URL of the S3 API the services call; empty: AWS S3 of `region`."""
    public_endpoint_url: str = ""
    """http(s) URL clients reach the store at, used in presigned URLs (they sign the host);
    empty: endpoint_url."""
    region: str = Field(default="us-east-1", min_length=1, max_length=64)
    """The store's region name, used in request signatures."""
    bucket: str = Field(default="parley-media", min_length=3, max_length=63)
    """The region's media bucket."""
    access_key_id_file: Path | None = None
    """File holding the access key id; unset: the default AWS credential chain (instance or pod
    role)."""
    secret_access_key_file: Path | None = None
    """File holding the secret access key; needed with access_key_id_file."""
    addressing_style: Literal["path", "virtual", "auto"] = "path"
    """Bucket addressing in URLs: path (endpoint/bucket/key, works everywhere) or virtual
    (bucket.endpoint/key)."""

    @field_validator("endpoint_url", "public_endpoint_url")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _keys_together(self) -> S3Settings:
        if (self.access_key_id_file is None) != (self.secret_access_key_file is None):
            raise ValueError("access_key_id_file and secret_access_key_file go together")
        return self


class TracingSettings(Section):
    enabled: bool = False
    """Export OpenTelemetry traces of every RPC, of svc_message's calls to svc_keys, and of each
    message from SendMessage to its delivery on every recipient's stream."""
    otlp_endpoint: str = ""
    """OTLP/gRPC collector, e.g. http://127.0.0.1:4317 (a Jaeger all-in-one or an OpenTelemetry
    Collector); https:// for TLS. Needed when tracing is enabled."""
    sample_ratio: float = Field(default=1.0, ge=0, le=1)
    """Share of new traces kept, 0 to 1; a call from a traced caller follows the caller's decision
    (parent-based)."""
    service_name: str = Field(default="", max_length=64)
    """The traces' service.name; empty: the process's own (svc_keys, ...)."""
    export_timeout_seconds: float = Field(default=10.0, gt=0, le=120)
    """Seconds one export of a batch of spans to the collector may take."""

    @field_validator("otlp_endpoint")
    @classmethod
    def _otlp_scheme(cls, value: str) -> str:
        if value and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value

    @model_validator(mode="after")
    def _endpoint_when_enabled(self) -> TracingSettings:
        if self.enabled and not self.otlp_endpoint:
            raise ValueError("otlp_endpoint is needed when tracing is enabled")
        return self


class TelemetrySettings(Section):
    tracing: TracingSettings = TracingSettings()
    """OpenTelemetry tracing."""


class TopologySettings(Section):
    path: str = ""
    """The operator's topology.json (/etc/parley/topology/topology.json in its pods); empty or a
    missing file: no topology, one region."""
    poll_seconds: float = Field(default=5.0, gt=0, le=300)
    """Seconds between re-reads of the topology file; a changed document applies at once."""
