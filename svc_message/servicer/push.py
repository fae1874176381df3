"""parley.message.v1.MessageService: push tokens and do-not-disturb settings."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from typing import Any

from parley.message.v1 import messages_pb2 as pb
from parley_core.rpc.convert import timestamp
from parley_core.rpc.request import request_context
from parley_core.validation import Check
from svc_message.domain.push_devices import PushDevices
from svc_message.domain.push_policy import MINUTES_PER_DAY, time_zone
from svc_message.model import APNS, FCM, WEBHOOK, DoNotDisturb, PushToken
from svc_message.model.push import StoredPushSettings

MAX_TOKEN_CHARS = 4096
MAX_LOCALE_CHARS = 35
PROVIDERS = (WEBHOOK, APNS, FCM)
# BCP 47 in practice: a 2-3 letter language (or 4-8 for registered ones),
# then subtags of 1-8 letters or digits ("en", "en-GB", "zh-Hant-TW",
# "de-CH-1901", "sr-Latn-RS").
_LOCALE = re.compile(r"^[A-Za-z]{2,8}(-[A-Za-z0-9]{1,8})*$")
# Provider tokens are hex (APNs), base64url with ':' (FCM) or an operator's
# opaque address: printable ASCII without spaces covers all three.
_TOKEN = re.compile(r"^[\x21-\x7e]+$")


def check_token(check: Check, value: str) -> None:
    if not value:
        check.fail("token", "required")
    elif len(value) > MAX_TOKEN_CHARS:
        check.fail("token", f"at most {MAX_TOKEN_CHARS} characters")
    elif not _TOKEN.match(value):
        check.fail("token", "must be printable ASCII without spaces")


def check_locale(check: Check, value: str) -> None:
    if not value:
        return
    if len(value) > MAX_LOCALE_CHARS:
        check.fail("locale", f"at most {MAX_LOCALE_CHARS} characters")
    elif not _LOCALE.match(value):
        check.fail("locale", "must be a BCP 47 language tag such as en or en-GB")


def check_dnd(check: Check, dnd: pb.DoNotDisturb) -> None:
    for name in ("start_minute", "end_minute"):
        value = getattr(dnd, name)
        if not 0 <= value < MINUTES_PER_DAY:
            check.fail(f"do_not_disturb.{name}", f"must be 0 to {MINUTES_PER_DAY - 1}, got {value}")
    if time_zone(dnd.time_zone) is None:
        check.fail(
            "do_not_disturb.time_zone", "must be an IANA time zone such as Europe/Berlin, or empty"
        )


def registration_proto(token: PushToken) -> pb.PushRegistration:
    return pb.PushRegistration(
        device_id=token.device_id,
        provider=token.provider,  # type: ignore[arg-type]
        locale=token.locale,
        update_time=timestamp(token.updated_at),
    )


def settings_proto(stored: StoredPushSettings) -> pb.PushSettings:
    dnd = stored.do_not_disturb
    result = pb.PushSettings(
        do_not_disturb=pb.DoNotDisturb(
            enabled=dnd.enabled,
            start_minute=dnd.start_minute,
            end_minute=dnd.end_minute,
            time_zone=dnd.time_zone,
        )
    )
    if stored.updated_at is not None:
        result.update_time.CopyFrom(timestamp(stored.updated_at))
    return result


class PushServicer:
    """RegisterPushToken, RemovePushToken, GetPushSettings, UpdatePushSettings."""

    def __init__(self, devices: PushDevices, *, clock: Callable[[], float] = time.time) -> None:
        self._devices = devices
        self._clock = clock

    async def RegisterPushToken(
        self, request: pb.RegisterPushTokenRequest, context: Any
    ) -> pb.PushRegistration:
        check = Check().enum("provider", request.provider, PROVIDERS)
        check_token(check, request.token)
        check_locale(check, request.locale)
        check.done()
        rpc = request_context(context, clock=self._clock)
        registration = await self._devices.register(
            account_id=rpc.account_id,
            device_id=rpc.device_id,
            provider=request.provider,
            token=request.token,
            locale=request.locale,
        )
        return registration_proto(registration)

    async def RemovePushToken(
        self, request: pb.RemovePushTokenRequest, context: Any
    ) -> pb.RemovePushTokenResponse:
        rpc = request_context(context, clock=self._clock)
        await self._devices.remove(account_id=rpc.account_id, device_id=rpc.device_id)
        return pb.RemovePushTokenResponse()

    async def GetPushSettings(
        self, request: pb.GetPushSettingsRequest, context: Any
    ) -> pb.PushSettings:
        rpc = request_context(context, clock=self._clock)
        return settings_proto(await self._devices.settings(rpc.account_id))

    async def UpdatePushSettings(
        self, request: pb.UpdatePushSettingsRequest, context: Any
    ) -> pb.PushSettings:
        check = Check()
        if not request.HasField("do_not_disturb"):
            check.fail("do_not_disturb", "required")
        else:
            check_dnd(check, request.do_not_disturb)
        check.done()
        rpc = request_context(context, clock=self._clock)
        dnd = request.do_not_disturb
        stored = await self._devices.update_settings(
            rpc.account_id,
            DoNotDisturb(
                enabled=dnd.enabled,
                start_minute=dnd.start_minute,
                end_minute=dnd.end_minute,
                time_zone=dnd.time_zone,
            ),
        )
        return settings_proto(stored)
