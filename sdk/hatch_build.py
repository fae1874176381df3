"""Puts the generated API code (package ``parley``) into the SDK's wheel.

Only into a standard wheel: an editable install reaches ``../protos`` through
``dev-mode-dirs`` instead, so regenerated stubs are live without reinstalling.
Built from an sdist, the stubs sit beside ``parley_sdk`` (the sdist carries them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class GeneratedStubsHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version != "standard":
            return
        root = Path(self.root)
        for candidate in (root.parent / "protos" / "parley", root / "parley"):
            if (candidate / "__init__.py").is_file():
                build_data["force_include"][str(candidate)] = "parley"
                return
        raise FileNotFoundError("the generated package `parley` is in neither ../protos nor here")
