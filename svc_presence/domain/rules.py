"""Loads what the privacy policy needs and applies it.

One viewer and many targets (GetPresence, a subscription starting) or one
target and many viewers (a target's settings changed under live
subscriptions): either way at most four indexed reads, whatever the count,
and fewer when the settings make the contact lists irrelevant.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from svc_presence.domain import privacy
from svc_presence.model import EVERYTHING, HIDDEN, PresenceSettings, Rule, Visibility
from svc_presence.ports import ContactLists, SettingsReader


class RuleLoader:
    def __init__(self, settings: SettingsReader, contacts: ContactLists) -> None:
        self._settings = settings
        self._contacts = contacts

    async def for_viewer(self, viewer: str, targets: Sequence[str]) -> dict[str, Rule]:
        """What ``viewer`` may see of each target."""
        others = [t for t in targets if t != viewer]
        rules = {viewer: EVERYTHING} if len(others) < len(targets) else {}
        if not others:
            return rules
        settings = await self._settings.get_many([viewer, *others])
        mine = settings[viewer]
        if _sees_nobody(mine):
            rules.update(dict.fromkeys(others, HIDDEN))
            return rules
        ask_targets = [t for t in others if privacy.uses_contacts(settings[t])]
        ask_viewer = others if privacy.uses_contacts(mine) else []
        target_lists, viewer_lists = await asyncio.gather(
            self._contacts.listed(ask_targets, [viewer]),
            self._contacts.listed([viewer], ask_viewer),
        )
        for target in others:
            rules[target] = privacy.rule(
                viewer_id=viewer,
                target_id=target,
                viewer=mine,
                target=settings[target],
                target_lists_viewer=(target, viewer) in target_lists,
                viewer_lists_target=(viewer, target) in viewer_lists,
            )
        return rules

    async def for_target(self, target: str, viewers: Sequence[str]) -> dict[str, Rule]:
        """What each viewer may see of ``target``."""
        others = [v for v in viewers if v != target]
        rules = {target: EVERYTHING} if len(others) < len(viewers) else {}
        if not others:
            return rules
        settings = await self._settings.get_many([target, *others])
        theirs = settings[target]
        if _sees_nobody(theirs):
            # Reciprocity makes this symmetric: hidden from all.
            rules.update(dict.fromkeys(others, HIDDEN))
            return rules
        ask_target = others if privacy.uses_contacts(theirs) else []
        ask_viewers = [v for v in others if privacy.uses_contacts(settings[v])]
        target_lists, viewer_lists = await asyncio.gather(
            self._contacts.listed([target], ask_target),
            self._contacts.listed(ask_viewers, [target]),
        )
        for viewer in others:
            rules[viewer] = privacy.rule(
                viewer_id=viewer,
                target_id=target,
                viewer=settings[viewer],
                target=theirs,
                target_lists_viewer=(target, viewer) in target_lists,
                viewer_lists_target=(viewer, target) in viewer_lists,
            )
        return rules


def _sees_nobody(settings: PresenceSettings) -> bool:
    """Whether these settings hide the user from everyone, and so by
    reciprocity everyone from them (whatever the lists say)."""
    return settings.invisible or settings.online is Visibility.NOBODY
