"""The privacy policy of presence as pure functions: tables, then the full matrix."""

from __future__ import annotations

import itertools

import pytest

from parley_core.errors import InvalidArgument
from svc_presence.domain import privacy
from svc_presence.model import (
    DEFAULT_SETTINGS,
    EVERYTHING,
    HIDDEN,
    Availability,
    LiveState,
    PresenceSettings,
    PresenceView,
    Rule,
    Visibility,
)

E, C, N = Visibility.EVERYONE, Visibility.CONTACTS, Visibility.NOBODY
V, U = "viewer", "target"


def s(online: Visibility, last_seen: Visibility, invisible: bool = False) -> PresenceSettings:
    return PresenceSettings(online=online, last_seen=last_seen, invisible=invisible)


# Every settings combination the online >= last_seen rule allows.
VALID = [s(E, E), s(E, C), s(E, N), s(C, C), s(C, N), s(N, N)]
ALL_SETTINGS = VALID + [s(o, ls, True) for o, ls in [(E, E), (C, C), (E, N)]]


@pytest.mark.parametrize(
    ("visibility", "listed", "expected"),
    [
        (E, False, True),
        (E, True, True),
        (C, True, True),
        (C, False, False),
        (N, True, False),
        (N, False, False),
    ],
)
def test_admits(visibility: Visibility, listed: bool, expected: bool) -> None:
    assert privacy.admits(visibility, owner_lists_other=listed) is expected


# (viewer settings, target settings, target lists viewer, viewer lists target) -> rule
RULES = [
    pytest.param(s(E, E), s(E, E), False, False, EVERYTHING, id="everyone-both-ways"),
    pytest.param(s(E, E), s(C, C), True, False, EVERYTHING, id="target-lists-viewer"),
    pytest.param(s(E, E), s(C, C), False, True, HIDDEN, id="one-sided-list-is-not-mutual"),
    pytest.param(s(C, C), s(E, E), False, False, HIDDEN, id="reciprocity-viewer-contacts"),
    pytest.param(s(C, C), s(E, E), False, True, EVERYTHING, id="viewer-lists-target"),
    pytest.param(s(C, C), s(C, C), True, True, EVERYTHING, id="mutual-contacts"),
    pytest.param(s(C, C), s(C, C), True, False, HIDDEN, id="mutual-needed-1"),
    pytest.param(s(C, C), s(C, C), False, True, HIDDEN, id="mutual-needed-2"),
    pytest.param(s(E, E), s(E, N), False, False, Rule(True, False), id="target-hides-last-seen"),
    pytest.param(s(E, N), s(E, E), False, False, Rule(True, False), id="hides-last-seen-sees-none"),
    pytest.param(
        s(E, C), s(E, E), False, False, Rule(True, False), id="viewer-ls-contacts-unlisted"
    ),
    pytest.param(s(E, C), s(E, E), False, True, EVERYTHING, id="viewer-ls-contacts-listed"),
    pytest.param(s(E, E), s(E, C), True, False, EVERYTHING, id="target-ls-contacts-listed"),
    pytest.param(s(E, E), s(C, N), True, True, Rule(True, False), id="contacts-online-only"),
    pytest.param(s(E, E), s(N, N), True, True, HIDDEN, id="target-nobody"),
    pytest.param(s(N, N), s(E, E), True, True, HIDDEN, id="viewer-nobody"),
    pytest.param(s(E, E), s(E, E, True), True, True, HIDDEN, id="target-invisible"),
    pytest.param(s(E, E, True), s(E, E), True, True, HIDDEN, id="viewer-invisible"),
]


@pytest.mark.parametrize(("viewer", "target", "t_lists_v", "v_lists_t", "expected"), RULES)
def test_rule_table(
    viewer: PresenceSettings,
    target: PresenceSettings,
    t_lists_v: bool,
    v_lists_t: bool,
    expected: Rule,
) -> None:
    got = privacy.rule(
        viewer_id=V,
        target_id=U,
        viewer=viewer,
        target=target,
        target_lists_viewer=t_lists_v,
        viewer_lists_target=v_lists_t,
    )
    assert got == expected


def _shows(settings: PresenceSettings, field: str, listed: bool) -> bool:
    """The rule in the proto's words: the owner's visibility admits the other
    and the owner is not invisible."""
    if settings.invisible:
        return False
    visibility = getattr(settings, field)
    return visibility is E or (visibility is C and listed)


MATRIX = list(itertools.product(ALL_SETTINGS, ALL_SETTINGS, [False, True], [False, True]))


@pytest.mark.parametrize(("viewer", "target", "t_lists_v", "v_lists_t"), MATRIX)
def test_rule_full_matrix(
    viewer: PresenceSettings, target: PresenceSettings, t_lists_v: bool, v_lists_t: bool
) -> None:
    got = privacy.rule(
        viewer_id=V,
        target_id=U,
        viewer=viewer,
        target=target,
        target_lists_viewer=t_lists_v,
        viewer_lists_target=v_lists_t,
    )
    online = _shows(target, "online", t_lists_v) and _shows(viewer, "online", v_lists_t)
    last_seen = _shows(target, "last_seen", t_lists_v) and _shows(viewer, "last_seen", v_lists_t)
    assert got == Rule(online=online, last_seen=last_seen)
    # Whoever sees a last seen also sees online (the settings invariant).
    assert not got.last_seen or got.online
    # Self is always visible, whatever the settings and lists.
    assert (
        privacy.rule(
            viewer_id=V,
            target_id=V,
            viewer=viewer,
            target=viewer,
            target_lists_viewer=t_lists_v,
            viewer_lists_target=v_lists_t,
        )
        == EVERYTHING
    )


def test_broadening_a_setting_never_hides() -> None:
    """Monotonic: going from nobody to contacts to everyone, or adding a
    contact, can only reveal more (a sanity property over the matrix)."""
    breadth = {N: 0, C: 1, E: 2}
    for viewer, target, t_lists, v_lists in MATRIX:
        base = privacy.rule(
            viewer_id=V,
            target_id=U,
            viewer=viewer,
            target=target,
            target_lists_viewer=t_lists,
            viewer_lists_target=v_lists,
        )
        wider = privacy.rule(
            viewer_id=V,
            target_id=U,
            viewer=viewer,
            target=target,
            target_lists_viewer=True,
            viewer_lists_target=True,
        )
        assert (base.online <= wider.online) and (base.last_seen <= wider.last_seen)
        for other in VALID:
            if (
                breadth[other.online] >= breadth[target.online]
                and breadth[other.last_seen] >= breadth[target.last_seen]
            ):
                broader = PresenceSettings(other.online, other.last_seen, target.invisible)
                widened = privacy.rule(
                    viewer_id=V,
                    target_id=U,
                    viewer=viewer,
                    target=broader,
                    target_lists_viewer=t_lists,
                    viewer_lists_target=v_lists,
                )
                assert base.online <= widened.online and base.last_seen <= widened.last_seen


def test_default_settings_show_nothing_to_strangers() -> None:
    """An account nobody listed (or that does not exist: it has the defaults
    and no list) is hidden from everyone, so the two look the same."""
    for viewer in ALL_SETTINGS:
        for v_lists_t in (False, True):
            got = privacy.rule(
                viewer_id=V,
                target_id=U,
                viewer=viewer,
                target=DEFAULT_SETTINGS,
                target_lists_viewer=False,
                viewer_lists_target=v_lists_t,
            )
            assert got == HIDDEN


ONLINE_AT_5 = LiveState(online=True, seen_ms=5000)
OFFLINE_AT_5 = LiveState(online=False, seen_ms=5000)
NEVER = LiveState(online=False, seen_ms=None)


@pytest.mark.parametrize(
    ("rule", "state", "expected"),
    [
        (EVERYTHING, ONLINE_AT_5, (Availability.ONLINE, 5000)),
        (EVERYTHING, OFFLINE_AT_5, (Availability.OFFLINE, 5000)),
        (EVERYTHING, NEVER, (Availability.OFFLINE, None)),
        (Rule(True, False), ONLINE_AT_5, (Availability.ONLINE, None)),
        (Rule(True, False), OFFLINE_AT_5, (Availability.OFFLINE, None)),
        (HIDDEN, ONLINE_AT_5, (Availability.UNKNOWN, None)),
        (HIDDEN, OFFLINE_AT_5, (Availability.UNKNOWN, None)),
        (HIDDEN, NEVER, (Availability.UNKNOWN, None)),
    ],
)
def test_view(rule: Rule, state: LiveState, expected: tuple[Availability, int | None]) -> None:
    assert privacy.view("a", rule, state) == PresenceView("a", *expected)


def test_hidden_view_is_the_unknown_account_view() -> None:
    for state in (ONLINE_AT_5, OFFLINE_AT_5, NEVER):
        assert privacy.view("a", HIDDEN, state) == privacy.view("a", HIDDEN, NEVER)


# current, (online, last_seen, invisible) requested -> result or the field blamed
MERGES = [
    pytest.param(s(C, C), (E, None, None), s(E, C), None, id="widen-online"),
    pytest.param(s(C, C), (None, N, None), s(C, N), None, id="narrow-last-seen"),
    pytest.param(s(C, C), (None, None, True), s(C, C, True), None, id="go-invisible"),
    pytest.param(s(C, C), (E, E, None), s(E, E), None, id="both-at-once"),
    pytest.param(s(E, E), (N, N, False), s(N, N), None, id="nobody"),
    pytest.param(s(C, C), (None, E, None), None, "last_seen", id="last-seen-beyond-online"),
    pytest.param(s(E, E), (C, None, None), None, "online", id="online-below-last-seen"),
    pytest.param(s(E, E), (N, None, None), None, "online", id="online-nobody-ls-everyone"),
    pytest.param(s(C, C), (N, E, None), None, "last_seen", id="both-inconsistent"),
    pytest.param(s(E, N), (None, None, None), s(E, N), None, id="nothing-changes"),
]


@pytest.mark.parametrize(("current", "request_", "expected", "blamed"), MERGES)
def test_merge_settings(
    current: PresenceSettings,
    request_: tuple[Visibility | None, Visibility | None, bool | None],
    expected: PresenceSettings | None,
    blamed: str | None,
) -> None:
    online, last_seen, invisible = request_
    if blamed is not None:
        with pytest.raises(InvalidArgument) as failure:
            privacy.merge_settings(current, online=online, last_seen=last_seen, invisible=invisible)
        assert [v.field for v in failure.value.violations] == [blamed]
        return
    got = privacy.merge_settings(current, online=online, last_seen=last_seen, invisible=invisible)
    assert got == expected


def test_every_valid_merge_keeps_the_invariant() -> None:
    breadth = {N: 0, C: 1, E: 2}
    options: list[Visibility | None] = [None, E, C, N]
    for current in VALID:
        for online, last_seen in itertools.product(options, options):
            try:
                got = privacy.merge_settings(
                    current, online=online, last_seen=last_seen, invisible=None
                )
            except InvalidArgument:
                want_online = current.online if online is None else online
                want_ls = current.last_seen if last_seen is None else last_seen
                assert breadth[want_ls] > breadth[want_online]
                continue
            assert breadth[got.last_seen] <= breadth[got.online]


def test_state_order_and_dedup() -> None:
    # An offline state at the same instant as an online one came after it.
    assert OFFLINE_AT_5.order() > ONLINE_AT_5.order()
    assert LiveState(True, 6000).order() > OFFLINE_AT_5.order()
    assert NEVER.order() < ONLINE_AT_5.order()
    assert privacy.dedup(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
