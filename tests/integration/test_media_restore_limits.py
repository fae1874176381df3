"""RestoreMedia's limits: a per-account rate (media_restore_per_account,
RESOURCE_EXHAUSTED with RATE_LIMITED like every limited RPC) and a cap on the
restores one account has queued or running (QUOTA_EXCEEDED), against moto
(the one local server with archived objects) and a real database."""

from __future__ import annotations

import time
from typing import Any

import pytest

from parley_core.config import LimitRate, LimitsSettings
from parley_core.errors import PermissionDenied, Reason, ResourceExhausted
from parley_core.limits import InProcessBuckets, Limiter, rates_from_settings
from svc_media.app import LIMITS
from svc_media.model import RestoreState
from tests.integration import test_media_restore as restore_world
from tests.integration.test_media_restore import POLL, World, archived_media

# The restore tests' world (real SecantusDB, moto) as fixtures of this module too.
backends = restore_world.backends
moto = restore_world.moto
world = restore_world.world

pytestmark = [pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(180)]


async def exhausted(call: Any) -> ResourceExhausted:
    try:
        await call
    except ResourceExhausted as exc:
        return exc
    raise AssertionError("the call succeeded")


async def test_an_account_has_at_most_its_cap_of_restores_queued_or_running(
    world: World,
) -> None:
    now = time.time()
    restores = world.handler(max_active=2)
    first, second, third = [await archived_media(world, "ann") for _ in range(3)]
    for media in (first, second):
        view = await restores.request(
            account_id="ann", device_id="phone", media_id=media.media_id, days=1, now=now
        )
        assert view.state == RestoreState.RESTORING
    refused = await exhausted(
        restores.request(
            account_id="ann", device_id="phone", media_id=third.media_id, days=1, now=now
        )
    )
    assert refused.reason == Reason.QUOTA_EXCEEDED
    assert refused.metadata == {"quota": "active_restores", "limit": "2", "used": "2"}
    assert await world.restores.get(third.media_id) is None
    assert world.stats.restore_refusals == 1
    # Asking again for one it already asked for (another device) is no new restore.
    again = await restores.request(
        account_id="ann", device_id="laptop", media_id=first.media_id, days=1, now=now
    )
    assert again.state == RestoreState.RESTORING
    # The cap is the account's: a reader of the third file restores it.
    world.readers.allowed["ben"] = {third.media_id, first.media_id}
    bens = await restores.request(
        account_id="ben", device_id="tablet", media_id=third.media_id, days=1, now=now
    )
    assert bens.state == RestoreState.RESTORING
    # ann joining ben's running restore is one more of hers: refused at the cap.
    joined = await exhausted(
        restores.request(
            account_id="ann", device_id="phone", media_id=third.media_id, days=1, now=now
        )
    )
    assert joined.reason == Reason.QUOTA_EXCEEDED
    # Once ready they no longer count: ann may ask for the third one now.
    await restores.poll(now=now + POLL)
    assert (await world.restores.get(first.media_id)).state == RestoreState.READY  # type: ignore[union-attr]
    assert await world.restores.active_of("ann", limit=10) == 0
    joined_later = await restores.request(
        account_id="ann", device_id="phone", media_id=third.media_id, days=1, now=now + POLL
    )
    assert joined_later.state == RestoreState.READY
    # ben asking for a ready copy is answered as it is, whatever his count.
    ready = await restores.request(
        account_id="ben", device_id="tablet", media_id=first.media_id, days=1, now=now + POLL
    )
    assert ready.state == RestoreState.READY


async def test_restore_media_is_rate_limited_per_account_after_the_access_check(
    world: World,
) -> None:
    now = time.time()
    limiter = Limiter(
        InProcessBuckets(),
        rates_from_settings(
            LimitsSettings(media_restore_per_account=LimitRate(burst=2, per_minute=0.01))
        ),
        names=LIMITS,
    )
    world.limiter = limiter
    restores = world.handler()
    media = await archived_media(world, "cleo")
    # Outsiders are refused before the limit: they spend nothing of anyone's.
    for _ in range(3):
        with pytest.raises(PermissionDenied):
            await restores.request(
                account_id="mallory", device_id="m", media_id=media.media_id, days=1, now=now
            )
    for device in ("phone", "laptop"):
        view = await restores.request(
            account_id="cleo", device_id=device, media_id=media.media_id, days=1, now=now
        )
        assert view.state == RestoreState.RESTORING
    refused = await exhausted(
        restores.request(
            account_id="cleo", device_id="tablet", media_id=media.media_id, days=1, now=now
        )
    )
    assert refused.reason == Reason.RATE_LIMITED
    assert refused.metadata == {"limit": "media_restore_per_account"}
    assert refused.retry_after_seconds is not None and refused.retry_after_seconds > 0
    # Per account: another reader still has its own budget.
    world.readers.allowed["dan"] = {media.media_id}
    dans = await restores.request(
        account_id="dan", device_id="d", media_id=media.media_id, days=1, now=now
    )
    assert dans.state == RestoreState.RESTORING
