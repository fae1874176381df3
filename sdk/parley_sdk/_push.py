"""Client methods for push notifications: this device's token, the account's quiet hours."""

from __future__ import annotations

from parley.message.v1 import messages_pb2
from parley_sdk._paging import ClientBase
from parley_sdk._push_models import DoNotDisturb, PushProvider, PushRegistration, PushSettings

__all__ = ["PushMethods"]


class PushMethods(ClientBase):
    """Push notifications for devices without a live delivery stream.

    A device with a registered token and no delivery stream gets a
    notification when a message arrives in a conversation it has not muted,
    outside the account's do-not-disturb window. Several messages in a short
    while collapse into one notification. Notifications carry ids, the sender
    and a count, never the (encrypted) body: the app fetches the message.
    """

    async def register_push_token(
        self, provider: PushProvider, token: str, *, locale: str = ""
    ) -> PushRegistration:
        """Registers this device's push token, replacing any earlier one.

        ``token`` is the provider's device token (APNs: hex; FCM: registration
        token; webhook: the address the operator's receiver understands), at
        most 4096 characters. ``locale`` is a BCP 47 tag for the notification
        text, e.g. ``"en-GB"``; empty means English. Register again whenever the
        provider hands out a new token.
        """
        request = messages_pb2.RegisterPushTokenRequest(
            provider=messages_pb2.PushProvider.ValueType(int(provider)),
            token=token,
            locale=locale,
        )
        response = await self._session.unary(self._session.messages.RegisterPushToken, request)
        return PushRegistration.from_proto(response)

    async def remove_push_token(self) -> None:
        """Removes this device's push token (no-op without one); notifications
        still pending for it are dropped. Call it on logout."""
        await self._session.unary(
            self._session.messages.RemovePushToken, messages_pb2.RemovePushTokenRequest()
        )

    async def get_push_settings(self) -> PushSettings:
        """The account's notification settings, shared by all its devices."""
        response = await self._session.unary(
            self._session.messages.GetPushSettings, messages_pb2.GetPushSettingsRequest()
        )
        return PushSettings.from_proto(response)

    async def update_push_settings(self, *, do_not_disturb: DoNotDisturb) -> PushSettings:
        """Sets the account's quiet hours (``DoNotDisturb.off()`` turns them off).

        >>> await client.update_push_settings(
        ...     do_not_disturb=DoNotDisturb(start=time(22), end=time(7), time_zone="Europe/Berlin")
        ... )
        """
        request = messages_pb2.UpdatePushSettingsRequest(do_not_disturb=do_not_disturb.to_proto())
        response = await self._session.unary(self._session.messages.UpdatePushSettings, request)
        return PushSettings.from_proto(response)
