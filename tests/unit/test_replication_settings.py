"""message.replication reaches the replicators: every ReplicatorSettings field
is a config key, a file's values arrive unchanged, and a bad one is refused."""

from __future__ import annotations

import dataclasses

import pytest

from parley_core.config import ConfigError, ReplicationSettings, settings_from_tree
from svc_message.domain.replicator import ReplicatorSettings
from svc_message.replication_wiring import replicator_settings


def test_every_replicator_setting_is_configurable() -> None:
    fields = {f.name for f in dataclasses.fields(ReplicatorSettings)}
    assert fields == set(ReplicationSettings.model_fields)
    # The defaults agree, so a region without the section replicates as before.
    assert replicator_settings(ReplicationSettings()) == ReplicatorSettings()


def test_values_from_the_file_and_the_environment_reach_the_replicator() -> None:
    tree = {
        "message": {"replication": {"batch_changes": 50, "batch_seconds": 1.5, "lease_seconds": 30}}
    }
    settings = settings_from_tree(tree, {"PARLEY_MESSAGE__REPLICATION__RETRY_SECONDS": "2"})
    assert replicator_settings(settings.message.replication) == ReplicatorSettings(
        batch_changes=50, batch_seconds=1.5, lease_seconds=30.0, retry_seconds=2.0
    )


@pytest.mark.parametrize(
    ("key", "value"),
    [("batch_changes", 0), ("batch_seconds", -1), ("lease_seconds", 0.5), ("snapshot_page", 0)],
)
def test_out_of_range_values_are_refused_naming_the_key(key: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"message.replication.{key}"):
        settings_from_tree({"message": {"replication": {key: value}}}, {})
