"""The base of every settings section, and the error a bad value raises."""

from __future__ import annotations

from pydantic import (
    BaseModel,
    ConfigDict,
)

ENV_PREFIX = "PARLEY_"
NESTED = "__"
FILE_SUFFIX = "_FILE"


class ConfigError(Exception):
    """A configuration value is missing or invalid; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
