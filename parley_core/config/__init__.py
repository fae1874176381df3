"""Typed configuration: defaults, then a YAML file, then environment overrides.

Sources, later ones winning:
1. the defaults (the section modules);
2. a YAML file (``--config PATH`` or ``PARLEY_CONFIG``);
3. environment variables ``PARLEY_<SECTION>__<KEY>`` (``PARLEY_MONGO__URI``);
4. secrets from files: ``PARLEY_<SECTION>__<KEY>_FILE=/path`` reads the value
   from that file (the Kubernetes/Docker secret convention), so secrets never
   sit in the environment or the YAML.

Any bad value fails at start with a ConfigError naming the key. The sections
live in one module per feature (infra, push, services, media, limits,
archive); `loading` builds the whole tree.
"""

from __future__ import annotations

from parley_core.config._section import (
    ENV_PREFIX,
    FILE_SUFFIX,
    NESTED,
    ConfigError,
    Section,
)
from parley_core.config.archive import (
    ArchiveSettings,
)
from parley_core.config.infra import (
    AuthSettings,
    MongoSettings,
    RedisSettings,
    S3Settings,
    ServerSettings,
    TelemetrySettings,
    TopologySettings,
    TracingSettings,
)
from parley_core.config.limits import (
    LimitRate,
    LimitsSettings,
)
from parley_core.config.loading import (
    Settings,
    load_settings,
    read_config_file,
    settings_from_tree,
)
from parley_core.config.media import (
    GIB,
    MIB,
    MIN_ARCHIVE_DAYS,
    MIN_DAYS_IN_INFREQUENT,
    MIN_INFREQUENT_DAYS,
    MediaQuotaSettings,
    MediaServiceSettings,
    MediaTierSettings,
)
from parley_core.config.push import (
    ApnsPushSettings,
    FcmPushSettings,
    PushSettings,
    WebhookPushSettings,
)
from parley_core.config.services import (
    ANSWERED_BODY_BYTES,
    REQUEST_HEADROOM_BYTES,
    KeysServiceSettings,
    MessageServiceSettings,
    OwnershipSettings,
    PresenceServiceSettings,
    ReplicationSettings,
    SearchServiceSettings,
)

__all__ = [
    "ANSWERED_BODY_BYTES",
    "ENV_PREFIX",
    "FILE_SUFFIX",
    "GIB",
    "MIB",
    "MIN_ARCHIVE_DAYS",
    "MIN_DAYS_IN_INFREQUENT",
    "MIN_INFREQUENT_DAYS",
    "NESTED",
    "REQUEST_HEADROOM_BYTES",
    "ApnsPushSettings",
    "ArchiveSettings",
    "AuthSettings",
    "ConfigError",
    "FcmPushSettings",
    "KeysServiceSettings",
    "LimitRate",
    "LimitsSettings",
    "MediaQuotaSettings",
    "MediaServiceSettings",
    "MediaTierSettings",
    "MessageServiceSettings",
    "MongoSettings",
    "OwnershipSettings",
    "PresenceServiceSettings",
    "PushSettings",
    "RedisSettings",
    "ReplicationSettings",
    "S3Settings",
    "SearchServiceSettings",
    "Section",
    "ServerSettings",
    "Settings",
    "TelemetrySettings",
    "TopologySettings",
    "TracingSettings",
    "WebhookPushSettings",
    "load_settings",
    "read_config_file",
    "settings_from_tree",
]
