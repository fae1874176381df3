"""Client methods for conversations: direct, groups, channels, membership, inbox controls."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from parley.message.v1 import messages_pb2
from parley_sdk._paging import ClientBase, Pager
from parley_sdk.models import ArchiveFilter, ConversationView, Member, Role
from parley_sdk.retry import new_request_id

__all__ = ["ConversationMethods"]


def _role(role: Role) -> messages_pb2.Role.ValueType:
    return messages_pb2.Role.ValueType(int(role))


def _mute_deadline(until: datetime | timedelta, now: datetime) -> datetime:
    if isinstance(until, timedelta):
        if until <= timedelta(0):
            raise ValueError("a mute duration must be positive")
        return now + until
    if until.tzinfo is None:
        # Local or UTC? Guessing wrong mutes for hours too long or too short.
        raise ValueError("until must be timezone-aware (e.g. datetime.now(UTC) + ...)")
    return until


def set_muted_request(
    conversation_id: str,
    *,
    until: datetime | timedelta | None,
    forever: bool,
    request_id: str,
    now: datetime,
) -> messages_pb2.SetMutedRequest:
    """The wire form of :meth:`ConversationMethods.set_muted` (pure, for tests)."""
    if forever and until is not None:
        raise ValueError("pass until or forever, not both")
    request = messages_pb2.SetMutedRequest(
        request_id=request_id, conversation_id=conversation_id, forever=forever
    )
    if until is not None:
        request.until.FromDatetime(_mute_deadline(until, now))
    return request


class ConversationMethods(ClientBase):
    """Conversations, membership and per-member inbox settings."""

    # -- conversations --------------------------------------------------------

    async def create_direct_conversation(
        self, peer_account_id: str, *, request_id: str | None = None
    ) -> ConversationView:
        """The direct conversation with a peer, created on first use."""
        request = messages_pb2.CreateDirectConversationRequest(
            request_id=request_id or new_request_id(), peer_account_id=peer_account_id
        )
        return await self._session.unary(self._session.messages.CreateDirectConversation, request)

    async def create_group(
        self,
        title: str,
        *,
        members: Iterable[str] = (),
        avatar_ref: str = "",
        request_id: str | None = None,
    ) -> ConversationView:
        """Creates a group owned by this account with the given other members (account ids).

        At most 1024 members including the owner, else ``GroupFullError``.
        ``avatar_ref`` is any reference the app chooses (e.g. a media object id).
        """
        request = messages_pb2.CreateGroupRequest(
            request_id=request_id or new_request_id(),
            title=title,
            avatar_ref=avatar_ref,
            member_account_ids=list(members),
        )
        return await self._session.unary(self._session.messages.CreateGroup, request)

    async def create_channel(
        self,
        title: str,
        *,
        public: bool = False,
        avatar_ref: str = "",
        request_id: str | None = None,
    ) -> ConversationView:
        """Creates a broadcast channel owned by this account.

        Owners and admins post; anyone may :meth:`subscribe_channel` to a public
        channel, while admins add subscribers to others with :meth:`add_members`.
        """
        request = messages_pb2.CreateChannelRequest(
            request_id=request_id or new_request_id(),
            title=title,
            avatar_ref=avatar_ref,
            public=public,
        )
        return await self._session.unary(self._session.messages.CreateChannel, request)

    async def get_conversation(self, conversation_id: str) -> ConversationView:
        """The conversation as this account sees it; former members see it as it
        was when they left (``membership_state`` LEFT)."""
        request = messages_pb2.GetConversationRequest(conversation_id=conversation_id)
        return await self._session.unary(self._session.messages.GetConversation, request)

    def list_conversations(
        self,
        *,
        archive_filter: ArchiveFilter = ArchiveFilter.ACTIVE,
        page_size: int | None = None,
    ) -> Pager[ConversationView]:
        """The inbox across all pages: pinned first (newest pin first), then by
        newest activity. Archived conversations only with ``archive_filter``."""
        size = self._size(page_size, 100)
        archive = messages_pb2.ArchiveFilter.ValueType(int(archive_filter))
        return Pager(
            self._session,
            self._session.messages.ListConversations,
            lambda token: messages_pb2.ListConversationsRequest(
                page_size=size, page_token=token, archive_filter=archive
            ),
            "conversations",
        )

    # -- membership (groups and channels) -------------------------------------

    async def update_conversation_info(
        self,
        conversation_id: str,
        *,
        title: str | None = None,
        avatar_ref: str | None = None,
        request_id: str | None = None,
    ) -> ConversationView:
        """Renames a group or channel and/or changes its avatar (owners and admins).

        Fields left as None are kept; ``avatar_ref=""`` clears the avatar.
        """
        if title is None and avatar_ref is None:
            raise ValueError("pass title, avatar_ref or both")
        request = messages_pb2.UpdateConversationInfoRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id
        )
        if title is not None:
            request.title = title
        if avatar_ref is not None:
            request.avatar_ref = avatar_ref
        return await self._session.unary(self._session.messages.UpdateConversationInfo, request)

    async def add_members(
        self, conversation_id: str, account_ids: Iterable[str], *, request_id: str | None = None
    ) -> ConversationView:
        """Adds members to a group, or subscribers to a non-public channel (owners
        and admins). Accounts already in are ignored; past the cap ``GroupFullError``."""
        ids = [account_ids] if isinstance(account_ids, str) else list(account_ids)
        request = messages_pb2.AddMembersRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            account_ids=ids,
        )
        return await self._session.unary(self._session.messages.AddMembers, request)

    async def remove_member(
        self, conversation_id: str, account_id: str, *, request_id: str | None = None
    ) -> ConversationView:
        """Removes a member (owners and admins; only owners remove admins or owners).

        The removed member receives nothing after this and cannot read what follows.
        To remove yourself, use :meth:`leave_conversation`.
        """
        request = messages_pb2.RemoveMemberRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            account_id=account_id,
        )
        return await self._session.unary(self._session.messages.RemoveMember, request)

    async def leave_conversation(
        self, conversation_id: str, *, request_id: str | None = None
    ) -> int:
        """Leaves a group or unsubscribes from a channel; returns the seq of the system
        message recording it. The last owner gets ``LastOwnerError`` until they make
        another member owner."""
        request = messages_pb2.LeaveConversationRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id
        )
        response = await self._session.unary(self._session.messages.LeaveConversation, request)
        return int(response.left_seq)

    async def set_member_role(
        self,
        conversation_id: str,
        account_id: str,
        role: Role,
        *,
        request_id: str | None = None,
    ) -> ConversationView:
        """Promotes or demotes a member. Admins move members between MEMBER and
        ADMIN; only owners grant or take OWNER. In channels MEMBER means SUBSCRIBER."""
        request = messages_pb2.SetMemberRoleRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            account_id=account_id,
            role=_role(role),
        )
        return await self._session.unary(self._session.messages.SetMemberRole, request)

    async def subscribe_channel(
        self, conversation_id: str, *, request_id: str | None = None
    ) -> ConversationView:
        """Subscribes to a public channel (again: no change). Unsubscribe with
        :meth:`leave_conversation`."""
        request = messages_pb2.SubscribeChannelRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id
        )
        return await self._session.unary(self._session.messages.SubscribeChannel, request)

    def list_members(self, conversation_id: str, *, page_size: int | None = None) -> Pager[Member]:
        """Members with their roles in join order. A channel's subscribers are listed
        to its owners and admins only."""
        size = self._size(page_size, 1000)
        return Pager(
            self._session,
            self._session.messages.ListMembers,
            lambda token: messages_pb2.ListMembersRequest(
                conversation_id=conversation_id, page_size=size, page_token=token
            ),
            "members",
        )

    # -- inbox controls (this account only) ---------------------------------------

    async def set_muted(
        self,
        conversation_id: str,
        *,
        until: datetime | timedelta | None = None,
        forever: bool = False,
        request_id: str | None = None,
    ) -> ConversationView:
        """Mutes notifications until a time (aware datetime, or a duration from now),
        forever, or, with neither, unmutes."""
        request = set_muted_request(
            conversation_id,
            until=until,
            forever=forever,
            request_id=request_id or new_request_id(),
            now=datetime.now(UTC),
        )
        return await self._session.unary(self._session.messages.SetMuted, request)

    async def set_pinned(
        self, conversation_id: str, pinned: bool, *, request_id: str | None = None
    ) -> ConversationView:
        """Pins (newest pin first in the inbox) or unpins. Past the maximum of
        pinned conversations, ``TooManyPinsError``."""
        request = messages_pb2.SetPinnedRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            pinned=pinned,
        )
        return await self._session.unary(self._session.messages.SetPinned, request)

    async def set_archived(
        self, conversation_id: str, archived: bool, *, request_id: str | None = None
    ) -> ConversationView:
        """Archives or unarchives. A new message brings an archived conversation
        back to the inbox unless it is muted."""
        request = messages_pb2.SetArchivedRequest(
            request_id=request_id or new_request_id(),
            conversation_id=conversation_id,
            archived=archived,
        )
        return await self._session.unary(self._session.messages.SetArchived, request)

    async def mark_unread(
        self, conversation_id: str, *, request_id: str | None = None
    ) -> ConversationView:
        """Flags the conversation unread until this account next marks it read."""
        request = messages_pb2.MarkUnreadRequest(
            request_id=request_id or new_request_id(), conversation_id=conversation_id
        )
        return await self._session.unary(self._session.messages.MarkUnread, request)
