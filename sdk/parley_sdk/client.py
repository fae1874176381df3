"""The Parley client: accounts, conversations, messages, presence, push and the delivery stream."""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self, TypedDict, Unpack

import grpc
import httpx
from grpc import aio

from parley.common.v1 import common_pb2
from parley.keys.v1 import accounts_pb2
from parley_sdk._conversations import ConversationMethods
from parley_sdk._exports import ExportMethods
from parley_sdk._keys import KeyMethods
from parley_sdk._media import MediaMethods
from parley_sdk._messages import MessageMethods
from parley_sdk._paging import Pager
from parley_sdk._presence import PresenceMethods
from parley_sdk._push import PushMethods
from parley_sdk._search_client import SearchMethods
from parley_sdk._secure import E2EE
from parley_sdk._session import CredentialsListener, NotSignedInError, Session
from parley_sdk.credentials import Credentials
from parley_sdk.e2ee import DeviceStore
from parley_sdk.models import (
    Account,
    ConversationView,
    DeleteScope,
    Device,
    MessageDeleted,
    Platform,
    RegisteredDevice,
    StreamPosition,
)
from parley_sdk.retry import RetryPolicy, new_request_id
from parley_sdk.stream import AckPolicy, DeliveryStream

__all__ = [
    "DEFAULT_KEYS_TARGET",
    "DEFAULT_MEDIA_TARGET",
    "DEFAULT_MESSAGE_TARGET",
    "DEFAULT_PRESENCE_TARGET",
    "DEFAULT_SEARCH_TARGET",
    "DEFAULT_STREAM_RETRY_POLICY",
    "Client",
    "ConnectOptions",
    "StoreLike",
]

StoreLike = str | os.PathLike[str] | DeviceStore
"""Where a device keeps its encryption state: a SQLite file path, or an open store."""

# The store's settings key for the device's credentials (JSON).
_CREDENTIALS_SETTING = "credentials"

DEFAULT_KEYS_TARGET = "127.0.0.1:7101"
DEFAULT_MESSAGE_TARGET = "127.0.0.1:7102"
DEFAULT_PRESENCE_TARGET = "127.0.0.1:7103"
DEFAULT_MEDIA_TARGET = "127.0.0.1:7104"
DEFAULT_SEARCH_TARGET = "127.0.0.1:7105"

# Client keepalive lets a long-lived delivery stream notice a dead connection
# (laptop sleep, NAT timeout). gRPC servers by default refuse pings more often
# than every 5 minutes without data (GOAWAY "too_many_pings", which would drop
# the stream), so stay just above that.
_DEFAULT_CHANNEL_OPTIONS: tuple[tuple[str, Any], ...] = (
    ("grpc.keepalive_time_ms", 330_000),
    ("grpc.keepalive_timeout_ms", 20_000),
)


# A follower should ride out a service restart (graceful drain, then a fresh
# process): about 100 s of reconnecting before giving up.
DEFAULT_STREAM_RETRY_POLICY = RetryPolicy(max_attempts=12, initial_backoff=0.5, max_backoff=15.0)


class ConnectOptions(TypedDict, total=False):
    """The options of :meth:`Client.connect` besides targets and credentials."""

    channel_credentials: grpc.ChannelCredentials | None
    retry_policy: RetryPolicy | None
    stream_retry_policy: RetryPolicy | None
    timeout: float | None
    page_size: int
    refresh_margin: timedelta
    on_credentials_changed: CredentialsListener | None
    channel_options: Sequence[tuple[str, Any]]
    store: StoreLike | None
    media_target: str
    search_target: str
    http_client: httpx.AsyncClient | None


def _open_store(store: StoreLike) -> tuple[DeviceStore, bool]:
    """The store, and whether the client opened it (so closes it)."""
    if isinstance(store, DeviceStore):
        return store, False
    return DeviceStore.open(store), True


def _stored_credentials(store: DeviceStore) -> Credentials | None:
    saved = store.get_setting(_CREDENTIALS_SETTING)
    return None if saved is None else Credentials.from_json(saved)


def _saving_to(store: DeviceStore, listener: CredentialsListener | None) -> CredentialsListener:
    async def save(credentials: Credentials) -> None:
        # Refresh tokens are single use: the store must hold the newest one.
        store.set_setting(_CREDENTIALS_SETTING, credentials.to_json())
        if listener is not None:
            result = listener(credentials)
            if inspect.isawaitable(result):
                await result

    return save


def _platform(value: Platform) -> common_pb2.Platform.ValueType:
    return common_pb2.Platform.ValueType(int(value))


class Client(
    MediaMethods,
    SearchMethods,
    ConversationMethods,
    MessageMethods,
    PresenceMethods,
    PushMethods,
    ExportMethods,
    KeyMethods,
):
    """A connection to one Parley deployment, acting as one device.

    Create it with :meth:`connect` (existing credentials, or none to only sign up)
    or :meth:`sign_up`. Every method raises a :class:`parley_sdk.ParleyError`
    subclass on failure. Calls are retried on UNAVAILABLE and ABORTED, and mutating
    calls keep one request_id across their retries so the server applies them
    once. The access token is refreshed automatically.

    Besides accounts and devices (here), it has the conversation, membership
    and inbox methods of :class:`ConversationMethods`, the message, reaction
    and receipt methods of :class:`MessageMethods`, the presence, privacy and
    contact methods of :class:`PresenceMethods`, the push token and
    do-not-disturb methods of :class:`PushMethods`, the end-to-end encryption
    key directory methods of :class:`KeyMethods`, and :meth:`events`, the
    delivery stream. Paged lists return async iterators that fetch pages as
    they are consumed.

    Connected with a ``store``, it is end-to-end encrypted
    (:class:`SecureMethods`: :meth:`send_text`, :meth:`decrypt`,
    :meth:`read_history`), and its delivery stream decrypts messages and acts
    on key notices before yielding them. It then also sends and reads files
    (:class:`MediaMethods`: :meth:`send_file`, :meth:`download`,
    :meth:`forward`), encrypted on this device before they are uploaded, and
    keeps a full-text index of what it reads (:class:`SearchMethods`:
    :meth:`search`, :meth:`backfill_search_index`).
    """

    @classmethod
    async def connect(
        cls,
        *,
        keys_target: str = DEFAULT_KEYS_TARGET,
        message_target: str = DEFAULT_MESSAGE_TARGET,
        presence_target: str = DEFAULT_PRESENCE_TARGET,
        credentials: Credentials | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        retry_policy: RetryPolicy | None = None,
        stream_retry_policy: RetryPolicy | None = None,
        timeout: float | None = 10.0,
        page_size: int = 50,
        refresh_margin: timedelta = timedelta(seconds=60),
        on_credentials_changed: CredentialsListener | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        store: StoreLike | None = None,
        media_target: str = DEFAULT_MEDIA_TARGET,
        search_target: str = DEFAULT_SEARCH_TARGET,
        http_client: httpx.AsyncClient | None = None,
        handle: str | None = None,
        display_name: str = "",
        device_name: str | None = None,
        platform: Platform = Platform.CLI,
        home_region: str = "",
    ) -> Client:
        """Opens channels to the keys, message and presence services.

        Channels connect lazily: an unreachable server shows up as
        ``UnavailableError`` on the first call, after the retry policy gave up.
        ``retry_policy`` bounds retries of unary calls (UNAVAILABLE and ABORTED);
        ``stream_retry_policy`` bounds reconnects of a delivery stream.
        ``channel_credentials`` switches to TLS. ``on_credentials_changed`` (sync
        or async) gets every refreshed :class:`Credentials`; persist them, since
        the previous refresh token stops working.

        ``store`` (a SQLite path, one per device) turns end-to-end encryption
        on. Credentials then come from ``credentials``, else the store, else a
        sign-up with ``handle``, ``display_name``, ``device_name`` and
        ``platform`` (``ValueError`` if none of these). Every refreshed
        :class:`Credentials` is saved in the store (and still passed to
        ``on_credentials_changed``). Then the device's keys are ensured: a new
        identity is created and published (with 100 one-time prekeys) when the
        store has none, else prekeys are topped up to 100 when below 20. A
        store holds one device: credentials of another are a ``ValueError``.
        Without a store, ``handle`` signs up too when no credentials are given.

        ``media_target`` is the media service (files); its presigned URLs are
        fetched with ``http_client`` when given (proxies, TLS settings; the
        client leaves closing it to you), else with an ``httpx.AsyncClient``
        of its own. ``search_target`` is the search service (server search,
        opt-in per conversation; the default search stays on the device).
        """
        device_store, owns_store = _open_store(store) if store is not None else (None, False)
        try:
            if device_store is not None:
                stored = _stored_credentials(device_store)
                if credentials is None:
                    credentials = stored
                elif stored is not None and (stored.account_id, stored.device_id) != (
                    credentials.account_id,
                    credentials.device_id,
                ):
                    raise ValueError(
                        f"the store belongs to device {stored.device_id} of account "
                        f"{stored.account_id}; use another store for these credentials"
                    )
                else:
                    device_store.set_setting(_CREDENTIALS_SETTING, credentials.to_json())
                on_credentials_changed = _saving_to(device_store, on_credentials_changed)
                if credentials is None and not handle:
                    raise ValueError(
                        "the store holds no credentials: pass credentials= or handle= to sign up"
                    )
        except BaseException:
            if owns_store and device_store is not None:
                device_store.close()
            raise
        options = [*_DEFAULT_CHANNEL_OPTIONS, *channel_options]

        def open_channel(target: str) -> aio.Channel:
            if channel_credentials is None:
                return aio.insecure_channel(target, options=options)
            return aio.secure_channel(target, channel_credentials, options=options)

        session = Session(
            keys_channel=open_channel(keys_target),
            message_channel=open_channel(message_target),
            presence_channel=open_channel(presence_target),
            media_channel=open_channel(media_target),
            search_channel=open_channel(search_target),
            credentials=credentials,
            retry_policy=retry_policy or RetryPolicy(),
            stream_retry_policy=stream_retry_policy or DEFAULT_STREAM_RETRY_POLICY,
            timeout=timeout,
            refresh_margin=refresh_margin,
            on_credentials_changed=on_credentials_changed,
        )
        client = cls(session, page_size=page_size)
        client._http_client = http_client
        try:
            if credentials is None and handle:
                await client._sign_up(
                    handle=handle,
                    display_name=display_name,
                    device_name=device_name or handle,
                    platform=platform,
                    home_region=home_region,
                )
            if device_store is not None:
                client._e2ee = E2EE(client, device_store, owns_store=owns_store)
                owns_store = False  # the client closes it now
                client.identity_changed_on_connect = await client._e2ee.ensure_keys()
        except BaseException:
            await client.close()
            if owns_store and device_store is not None:
                device_store.close()
            raise
        return client

    @classmethod
    async def sign_up(
        cls,
        *,
        handle: str,
        display_name: str = "",
        device_name: str,
        platform: Platform = Platform.CLI,
        home_region: str = "",
        keys_target: str = DEFAULT_KEYS_TARGET,
        message_target: str = DEFAULT_MESSAGE_TARGET,
        presence_target: str = DEFAULT_PRESENCE_TARGET,
        **options: Unpack[ConnectOptions],
    ) -> Client:
        """Creates an account and its first device; returns a client signed in as it.

        ``options`` are those of :meth:`connect`. Read the new identity from
        :attr:`credentials` (``account_id``, ``device_id``) and persist it.
        With ``store``, the new device's credentials and keys go into it (a
        store that already holds a device's credentials is a ``ValueError``).
        ``home_region`` names the region the account lives in (empty: the
        region ``keys_target`` belongs to); the handle is unique across regions.
        """
        store = options.get("store")
        if store is not None:
            if isinstance(store, DeviceStore):
                taken = _stored_credentials(store) is not None
            else:
                peek = DeviceStore.open(store)
                try:
                    taken = _stored_credentials(peek) is not None
                finally:
                    peek.close()
            if taken:
                raise ValueError("the store already holds a device's credentials")
            return await cls.connect(
                keys_target=keys_target,
                message_target=message_target,
                presence_target=presence_target,
                handle=handle,
                display_name=display_name,
                device_name=device_name,
                platform=platform,
                home_region=home_region,
                **options,
            )
        client = await cls.connect(
            keys_target=keys_target,
            message_target=message_target,
            presence_target=presence_target,
            **options,
        )
        try:
            await client._sign_up(
                handle=handle,
                display_name=display_name,
                device_name=device_name,
                platform=platform,
                home_region=home_region,
            )
        except BaseException:
            await client.close()
            raise
        return client

    async def _sign_up(
        self,
        *,
        handle: str,
        display_name: str,
        device_name: str,
        platform: Platform,
        home_region: str = "",
    ) -> None:
        request = accounts_pb2.SignUpRequest(
            request_id=new_request_id(),
            handle=handle,
            display_name=display_name,
            device=accounts_pb2.NewDevice(name=device_name, platform=_platform(platform)),
            home_region=home_region,
        )
        response = await self._session.unary(
            self._session.accounts.SignUp, request, authenticated=False
        )
        credentials = Credentials.from_proto(
            response.credentials,
            account_id=response.account.account_id,
            device_id=response.device.device_id,
        )
        await self._session.set_credentials(credentials, notify=True)

    # -- lifecycle -----------------------------------------------------------

    async def close(self) -> None:
        await self._session.close()
        await self._close_object_store()
        if self._e2ee is not None:
            self._e2ee.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- identity --------------------------------------------------------------

    @property
    def credentials(self) -> Credentials | None:
        """Current credentials; they change on every refresh."""
        return self._session.credentials

    @property
    def account_id(self) -> str:
        return self._require_credentials().account_id

    @property
    def device_id(self) -> str:
        return self._require_credentials().device_id

    def _require_credentials(self) -> Credentials:
        credentials = self._session.credentials
        if credentials is None:
            raise NotSignedInError()
        return credentials

    async def refresh(self) -> Credentials:
        """Trades the refresh token for new credentials now (normally automatic)."""
        return await self._session.refresh()

    async def register_device(
        self, *, name: str, platform: Platform = Platform.CLI
    ) -> RegisteredDevice:
        """Links a new device to this account; hand its credentials to that device."""
        request = accounts_pb2.RegisterDeviceRequest(
            request_id=new_request_id(),
            device=accounts_pb2.NewDevice(name=name, platform=_platform(platform)),
        )
        response = await self._session.unary(self._session.accounts.RegisterDevice, request)
        credentials = Credentials.from_proto(
            response.credentials,
            account_id=response.device.account_id or self.account_id,
            device_id=response.device.device_id,
        )
        return RegisteredDevice(device=response.device, credentials=credentials)

    async def revoke_device(self, device_id: str | None = None) -> None:
        """Signs a device of this account out; without ``device_id``, this one (logout).

        After revoking this device the client holds no credentials any more.
        """
        request = accounts_pb2.RevokeDeviceRequest(
            request_id=new_request_id(), device_id=device_id or ""
        )
        await self._session.unary(self._session.accounts.RevokeDevice, request)
        credentials = self._session.credentials
        if not device_id or (credentials is not None and device_id == credentials.device_id):
            await self._session.set_credentials(None, notify=False)

    def list_devices(self, *, page_size: int | None = None) -> Pager[Device]:
        """This account's devices, across all pages."""
        size = self._size(page_size, 100)
        return Pager(
            self._session,
            self._session.accounts.ListDevices,
            lambda token: accounts_pb2.ListDevicesRequest(page_size=size, page_token=token),
            "devices",
        )

    async def get_account(
        self, *, account_id: str | None = None, handle: str | None = None
    ) -> Account:
        """Looks an account up by id or handle; with neither, returns this one."""
        if account_id and handle:
            raise ValueError("pass account_id or handle, not both")
        if account_id:
            request = accounts_pb2.GetAccountRequest(account_id=account_id)
        elif handle:
            request = accounts_pb2.GetAccountRequest(handle=handle.removeprefix("@"))
        else:
            request = accounts_pb2.GetAccountRequest()
        return await self._session.unary(self._session.accounts.GetAccount, request)

    async def delete_account(self, *, confirm: str) -> accounts_pb2.DeleteAccountResponse:
        """Erases this account (every device is signed out before the answer,
        the rest follows within minutes; see AccountService.DeleteAccount).

        ``confirm`` must be the account's handle (``@`` optional, case
        ignored), as a guard against a mistaken call. Afterwards the client
        holds no credentials. The answer names the erasure record and when
        the handle can be signed up again.
        """
        request = accounts_pb2.DeleteAccountRequest(
            request_id=new_request_id(), confirm_handle=confirm.removeprefix("@")
        )
        response: accounts_pb2.DeleteAccountResponse = await self._session.unary(
            self._session.accounts.DeleteAccount, request
        )
        await self._session.set_credentials(None, notify=False)
        return response

    # -- delivery stream ------------------------------------------------------------

    def events(
        self,
        *,
        positions: Mapping[str, StreamPosition] | None = None,
        sync_token: str = "",
        auto_ack: bool = True,
        ack_policy: AckPolicy | None = None,
    ) -> DeliveryStream:
        """The delivery stream: replay since the given positions, then live events.

        ``positions`` maps conversation id to the :class:`StreamPosition` this
        device holds (as :attr:`DeliveryStream.positions` reported it last time);
        the stream resumes after each ``version``. Conversations left out resume
        from the device's last ack. ``sync_token`` is the last
        :class:`SyncCompleteEvent` token seen (``""`` replays all current
        receipts). The stream opens on first iteration or ``async with``.
        With ``auto_ack``, handled events are acked as ``ack_policy`` says
        (default :class:`AckPolicy`: at most one ack a second, or at once
        when 64 events wait).
        """
        return DeliveryStream(
            self._session,
            positions=positions,
            sync_token=sync_token,
            auto_ack=auto_ack,
            ack_policy=ack_policy,
            prepare=None if self._e2ee is None else self._e2ee.prepare,
        )

    # -- membership changes the sender keys follow at once -----------------------------

    async def add_members(
        self, conversation_id: str, account_ids: Iterable[str], *, request_id: str | None = None
    ) -> ConversationView:
        """As :meth:`ConversationMethods.add_members`; an encrypted client's next
        send in the group also hands its sender key to the new members' devices."""
        view = await super().add_members(conversation_id, account_ids, request_id=request_id)
        if self._e2ee is not None:
            self._e2ee.groups.forget_members(conversation_id)
            if view.conversation.server_search:
                # A new epoch of the blind index: this device makes its key.
                await self._e2ee.server.after_change(conversation_id, view.conversation.last_seq)
        return view

    async def remove_member(
        self, conversation_id: str, account_id: str, *, request_id: str | None = None
    ) -> ConversationView:
        """As :meth:`ConversationMethods.remove_member`; an encrypted client also
        starts a new sender key for the group, so the removed member cannot
        read what it sends next."""
        view = await super().remove_member(conversation_id, account_id, request_id=request_id)
        if self._e2ee is not None:
            # Not waiting for the stream: the next send must not reach them.
            self._e2ee.groups.on_departure(conversation_id, [account_id], from_notice=False)
            if view.conversation.server_search:
                await self._e2ee.server.after_change(conversation_id, view.conversation.last_seq)
        return view

    async def delete_message(
        self,
        conversation_id: str,
        message_id: str,
        *,
        scope: DeleteScope = DeleteScope.FOR_ME,
        request_id: str | None = None,
    ) -> MessageDeleted:
        """As :meth:`MessageMethods.delete_message`; an encrypted client also takes
        the message out of its search index, and a delete for everyone out of
        the server's blind index when the conversation has server search on."""
        deletion = await super().delete_message(
            conversation_id, message_id, scope=scope, request_id=request_id
        )
        if self._e2ee is not None:
            self._e2ee.unindex([message_id])
            if scope is DeleteScope.FOR_EVERYONE:
                await self._e2ee.server.remove(conversation_id, message_id)
        return deletion
