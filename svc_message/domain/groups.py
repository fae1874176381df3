"""Groups and channels: creating them and changing who is in them.

Every membership or info change of a group is a system message in the
conversation's feed, committed through the pipeline first; the membership
documents follow. The system message's seq and version are where a joining
member's history starts and where a leaving member's history ends. A crash
between the two steps is repaired by the client's retry: the retry finds the
system message by its request_id and finishes the membership steps, which
are idempotent.

Channel subscribers are not feed events (a channel may gain thousands a
minute); they are member records only, and their streams learn of the change
through their own account's doorbell channel.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime

from parley_core.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Reason,
    ResourceExhausted,
)
from parley_core.ids import with_region
from parley_core.limits import LimitName
from svc_message.domain import roles
from svc_message.domain.conversations import ConversationsHandler, Membership
from svc_message.domain.limits import FeedLimits
from svc_message.domain.sending import Committed, SendPipeline
from svc_message.domain.system_messages import commit_system
from svc_message.model import (
    ADMIN,
    CHANNEL,
    DIRECT,
    GROUP_MEMBER_CAP,
    OWNER,
    PENDING_JOIN,
    Change,
    Conversation,
    InboxEntry,
    Message,
    SystemAction,
    SystemEvent,
)
from svc_message.model.broadcast import Broadcast
from svc_message.ports import Accounts, EventCodec, MembershipChanges, Publisher
from svc_message.storage.messages import MessageStore

# Concurrent account look-ups in svc_keys when a group is created.
LOOKUP_CONCURRENCY = 32
PENDING = PENDING_JOIN


def _at(now: float) -> datetime:
    return datetime.fromtimestamp(now, UTC)


def conversation_id_for(account_id: str, request_id: str, *, region_number: int | None) -> str:
    """A created conversation's id follows from who asked and the request id,
    so a retried create finds the first attempt's conversation. Hashed, so ids
    stay random-looking (they are the shard key). With regions, it carries the
    number of the region that owns it (the creator's home)."""
    digest = hashlib.blake2b(f"{account_id}|{request_id}".encode(), digest_size=16).digest()
    value = str(uuid.UUID(bytes=digest, version=4))
    return value if region_number is None else with_region(value, region_number)


def group_full(extra: str = "") -> ResourceExhausted:
    return ResourceExhausted(
        f"a group has at most {GROUP_MEMBER_CAP} members{extra}", reason=Reason.GROUP_FULL
    )


class GroupsHandler:
    def __init__(
        self,
        conversations: ConversationsHandler,
        messages: MessageStore,
        pipeline: SendPipeline,
        accounts: Accounts,
        bus: MembershipChanges,
        publisher: Publisher,
        codec: EventCodec,
        limits: FeedLimits,
    ) -> None:
        self._limits = limits
        self._conversations = conversations
        self._store = conversations.store
        self._messages = messages
        self._pipeline = pipeline
        self._accounts = accounts
        self._bus = bus
        self._publisher = publisher
        self._codec = codec

    # -- helpers -----------------------------------------------------------------

    async def _system(
        self,
        conversation: Conversation,
        *,
        actor: str,
        device_id: str,
        request_id: str,
        event: SystemEvent,
        notify: Sequence[str] = (),
    ) -> Committed:
        return await commit_system(
            self._pipeline,
            conversation,
            actor=actor,
            device_id=device_id,
            request_id=request_id,
            event=event,
            notify=notify,
        )

    async def _joined(
        self,
        conversation: Conversation,
        account_ids: Sequence[str],
        committed: Committed,
        *,
        now: float,
    ) -> None:
        """Record where the accounts' history starts: the system message that
        added them."""
        message = committed.message
        assert message is not None
        conversation_id = conversation.conversation_id
        await self._store.set_joined(
            conversation_id, account_ids, seq=message.seq, version=message.version
        )
        await self._store.record_joins(
            conversation_id,
            account_ids,
            seq=message.seq,
            version=message.version,
            channel=conversation.type == CHANNEL,
            now=_at(now),
        )
        await self._changed(conversation_id)

    async def _changed(self, conversation_id: str) -> None:
        self._conversations.forget(conversation_id)
        await self._bus.membership_changed(conversation_id)

    async def _require_accounts(self, account_ids: Sequence[str], bearer_token: str) -> None:
        limit = asyncio.Semaphore(LOOKUP_CONCURRENCY)

        async def exists(account_id: str) -> bool:
            async with limit:
                return await self._accounts.exists(account_id, bearer_token=bearer_token)

        found = await asyncio.gather(*(exists(a) for a in account_ids))
        missing = [a for a, ok in zip(account_ids, found, strict=True) if not ok]
        if missing:
            raise NotFound(
                f"no account with id {missing[0]}"
                + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                reason=Reason.ACCOUNT_NOT_FOUND,
            )

    async def _manageable(self, conversation_id: str, account_id: str) -> Membership:
        membership = await self._conversations.require_member(conversation_id, account_id)
        if membership.conversation.type == DIRECT:
            raise FailedPrecondition(
                "direct conversations have no membership to manage",
                reason=Reason.WRONG_CONVERSATION_TYPE,
            )
        return membership

    async def _fresh(self, conversation_id: str) -> Conversation:
        self._conversations.forget(conversation_id)
        return await self._conversations.conversation(conversation_id)

    # -- creation ----------------------------------------------------------------

    async def create(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        kind: int,
        title: str,
        avatar_ref: str,
        member_ids: Sequence[str],
        public: bool,
        bearer_token: str,
        now: float,
    ) -> InboxEntry:
        others = sorted({m for m in member_ids if m != account_id})
        if len(others) + 1 > GROUP_MEMBER_CAP:
            raise group_full(f"; asked for {len(others) + 1}")
        conversation_id = conversation_id_for(
            account_id, request_id, region_number=self._conversations.region_number()
        )
        await self._limits.account_change(
            LimitName.GROUP_CREATE_PER_ACCOUNT, conversation_id, account_id, request_id, now
        )
        await self._require_accounts(others, bearer_token)
        members = (account_id, *others)
        conversation = Conversation(
            conversation_id=conversation_id,
            type=kind,
            member_ids=members,
            created_at=_at(now),
            last_activity_at=_at(now),
            title=title,
            avatar_ref=avatar_ref,
            public=public,
            member_count=len(members),
            roles=((account_id, OWNER),),
        )
        if not await self._store.create(conversation):
            existing = await self._fresh(conversation_id)
            if existing.type != kind or account_id not in (existing.member_ids or ()):
                raise FailedPrecondition("this request_id was already used for another request")
            conversation = existing
        committed = await self._system(
            conversation,
            actor=account_id,
            device_id=device_id,
            request_id=request_id,
            event=SystemEvent(
                SystemAction.CREATED,
                account_id,
                tuple(others),
                title=title,
                avatar_ref=avatar_ref,
            ),
            notify=members,
        )
        await self._joined(conversation, members, committed, now=now)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    # -- members -----------------------------------------------------------------

    async def add_members(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        account_ids: Sequence[str],
        bearer_token: str,
        now: float,
    ) -> InboxEntry:
        actor = await self._manageable(conversation_id, account_id)
        roles.require_admin(actor.role)
        await self._limits.account_change(
            LimitName.ADD_MEMBERS_PER_ACCOUNT, conversation_id, account_id, request_id, now
        )
        conversation = await self._fresh(conversation_id)
        wanted = sorted(set(account_ids))
        if conversation.type == CHANNEL:
            await self._require_accounts(wanted, bearer_token)
            for subscriber in wanted:
                await self._subscribe(conversation, subscriber, now=now)
            return await self._conversations.get(
                conversation_id=conversation_id, account_id=account_id
            )
        pending = {a for a, position in conversation.joined if position == PENDING}
        new = [a for a in wanted if a not in conversation.member_ids]
        if new:
            if conversation.member_count + len(new) > GROUP_MEMBER_CAP:
                raise group_full(f"; it has {conversation.member_count}, {len(new)} more asked")
            await self._require_accounts(new, bearer_token)
            if not await self._store.add_members(
                conversation_id, new, cap=GROUP_MEMBER_CAP, pending=PENDING
            ):
                # Someone else changed the membership meanwhile: decide again.
                fresh = await self._fresh(conversation_id)
                if fresh.member_count + len(new) > GROUP_MEMBER_CAP:
                    raise group_full()
                raise FailedPrecondition("the membership changed meanwhile; retry")
        joining = sorted(set(new) | (pending & set(wanted)))
        if not joining:
            return await self._conversations.get(
                conversation_id=conversation_id, account_id=account_id
            )
        conversation = await self._fresh(conversation_id)
        committed = await self._system(
            conversation,
            actor=account_id,
            device_id=device_id,
            request_id=request_id,
            event=SystemEvent(SystemAction.MEMBERS_ADDED, account_id, tuple(joining)),
            notify=joining,
        )
        await self._joined(conversation, joining, committed, now=now)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def _subscribe(self, conversation: Conversation, account_id: str, *, now: float) -> None:
        (current,) = await self._conversations.fresh([conversation])
        joined = await self._store.record_joins(
            conversation.conversation_id,
            [account_id],
            seq=0,
            version=current.last_version,
            channel=True,
            now=_at(now),
        )
        if joined:
            await self._store.count_subscriber(conversation.conversation_id, 1)
        await self._changed(conversation.conversation_id)
        await self._tell(account_id, conversation)

    async def _tell(self, account_id: str, conversation: Conversation) -> None:
        """Tell the account's streams to look at the conversation again."""
        envelope = self._codec.conversation(conversation)
        await self._publisher.publish(
            [Broadcast(self._codec.encode(envelope), accounts=(account_id,))]
        )

    async def subscribe(self, *, account_id: str, conversation_id: str, now: float) -> InboxEntry:
        conversation = await self._conversations.conversation(conversation_id)
        if conversation.type != CHANNEL:
            raise FailedPrecondition(
                "only channels can be subscribed to", reason=Reason.WRONG_CONVERSATION_TYPE
            )
        membership = await self._conversations.membership(conversation_id, account_id)
        if membership is None or not membership.active:
            if not conversation.public:
                raise PermissionDenied(
                    "this channel is not public; its admins add subscribers",
                    reason=Reason.ROLE_REQUIRED,
                )
            await self._limits.per_account(
                LimitName.CHANNEL_SUBSCRIBE_PER_ACCOUNT, account_id, now=now
            )
            await self._subscribe(conversation, account_id, now=now)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def _retry_of(
        self, conversation_id: str, account_id: str, request_id: str
    ) -> Change | None:
        return await self._messages.by_request(conversation_id, account_id, request_id)

    async def remove_member(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        target_id: str,
        now: float,
    ) -> InboxEntry:
        if target_id == account_id:
            raise InvalidArgument.field("account_id", "use LeaveConversation to leave")
        actor = await self._manageable(conversation_id, account_id)
        conversation = await self._fresh(conversation_id)
        target = await self._conversations.membership(conversation_id, target_id)
        if target is None or not target.active:
            retry = await self._retry_of(conversation_id, account_id, request_id)
            if retry is not None and retry.message is not None:
                await self._finish_departure(conversation, target_id, retry.message, now=now)
                return await self._conversations.get(
                    conversation_id=conversation_id, account_id=account_id
                )
            raise FailedPrecondition(
                "that account is not a member of this conversation", reason=Reason.NOT_A_MEMBER
            )
        roles.check_remove(actor.role, target.role)
        await self._limits.account_change(
            LimitName.GROUP_ADMIN_PER_ACCOUNT, conversation_id, account_id, request_id, now
        )
        if conversation.type == CHANNEL and target_id not in conversation.member_ids:
            await self._unsubscribe(conversation, target_id, now=now)
        else:
            committed = await self._system(
                conversation,
                actor=account_id,
                device_id=device_id,
                request_id=request_id,
                event=SystemEvent(SystemAction.MEMBER_REMOVED, account_id, (target_id,)),
                notify=(target_id,),
            )
            assert committed.message is not None
            await self._finish_departure(conversation, target_id, committed.message, now=now)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def _finish_departure(
        self, conversation: Conversation, account_id: str, message: Message, *, now: float
    ) -> None:
        conversation_id = conversation.conversation_id
        # A group counts member_ids; a channel counts active member records.
        channel = conversation.type == CHANNEL
        await self._store.remove_member(conversation_id, account_id, count=not channel)
        gone = await self._store.record_departure(
            conversation_id, account_id, seq=message.seq, version=message.version, now=_at(now)
        )
        if gone and channel:
            await self._store.count_subscriber(conversation_id, -1)
        await self._changed(conversation_id)

    async def _unsubscribe(self, conversation: Conversation, account_id: str, *, now: float) -> int:
        (current,) = await self._conversations.fresh([conversation])
        if await self._store.record_departure(
            conversation.conversation_id,
            account_id,
            seq=current.last_seq,
            version=current.last_version,
            now=_at(now),
        ):
            await self._store.count_subscriber(conversation.conversation_id, -1)
        await self._changed(conversation.conversation_id)
        await self._tell(account_id, conversation)
        return current.last_seq

    async def leave(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        now: float,
    ) -> int:
        """Leave; the seq where the caller's history ends."""
        membership = await self._conversations.membership(conversation_id, account_id)
        if membership is None or not membership.active:
            retry = await self._retry_of(conversation_id, account_id, request_id)
            if retry is not None and retry.message is not None:
                conversation = await self._fresh(conversation_id)
                await self._finish_departure(conversation, account_id, retry.message, now=now)
                return retry.message.seq
            raise PermissionDenied("you are not a member of this conversation")
        conversation = await self._fresh(conversation_id)
        if conversation.type == DIRECT:
            raise FailedPrecondition(
                "direct conversations cannot be left", reason=Reason.WRONG_CONVERSATION_TYPE
            )
        if conversation.type == CHANNEL and account_id not in conversation.member_ids:
            return await self._unsubscribe(conversation, account_id, now=now)
        owners = sum(1 for _, role in conversation.roles if role == OWNER)
        roles.check_leave(
            role=conversation.role_of(account_id),
            owners=owners,
            members=len(conversation.member_ids),
        )
        committed = await self._system(
            conversation,
            actor=account_id,
            device_id=device_id,
            request_id=request_id,
            event=SystemEvent(SystemAction.MEMBER_LEFT, account_id, (account_id,)),
            notify=(account_id,),
        )
        assert committed.message is not None
        await self._finish_departure(conversation, account_id, committed.message, now=now)
        return committed.message.seq

    async def set_role(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        target_id: str,
        role: int,
        now: float,
    ) -> InboxEntry:
        actor = await self._manageable(conversation_id, account_id)
        conversation = await self._fresh(conversation_id)
        target = await self._conversations.membership(conversation_id, target_id)
        if target is None or not target.active:
            raise FailedPrecondition(
                "that account is not a member of this conversation", reason=Reason.NOT_A_MEMBER
            )
        plain = roles.plain_role(conversation.type)
        new_role = plain if role not in (OWNER, ADMIN) else role
        owners = sum(1 for _, r in conversation.roles if r == OWNER)
        roles.check_set_role(
            conversation_type=conversation.type,
            actor_role=actor.role,
            target_role=target.role,
            new_role=new_role,
            owners=owners,
        )
        if target.role == new_role:
            return await self._conversations.get(
                conversation_id=conversation_id, account_id=account_id
            )
        await self._limits.account_change(
            LimitName.GROUP_ADMIN_PER_ACCOUNT, conversation_id, account_id, request_id, now
        )
        await self._system(
            conversation,
            actor=account_id,
            device_id=device_id,
            request_id=request_id,
            event=SystemEvent(SystemAction.ROLE_CHANGED, account_id, (target_id,), role=new_role),
        )
        if conversation.type == CHANNEL:
            # Channel admins are listed in member_ids; subscribers are not.
            if new_role in (OWNER, ADMIN) and target_id not in conversation.member_ids:
                await self._store.add_members(conversation_id, [target_id], cap=None, count=False)
            elif new_role == plain:
                await self._store.remove_member(conversation_id, target_id, count=False)
        await self._store.set_role(
            conversation_id, target_id, None if new_role == plain else new_role
        )
        await self._changed(conversation_id)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def update_info(
        self,
        *,
        account_id: str,
        device_id: str,
        request_id: str,
        conversation_id: str,
        title: str | None,
        avatar_ref: str | None,
        now: float,
    ) -> InboxEntry:
        actor = await self._manageable(conversation_id, account_id)
        roles.require_admin(actor.role)
        conversation = await self._fresh(conversation_id)
        changed = replace(
            conversation,
            title=conversation.title if title is None else title,
            avatar_ref=conversation.avatar_ref if avatar_ref is None else avatar_ref,
        )
        if (changed.title, changed.avatar_ref) != (conversation.title, conversation.avatar_ref):
            await self._limits.account_change(
                LimitName.GROUP_ADMIN_PER_ACCOUNT, conversation_id, account_id, request_id, now
            )
            await self._system(
                conversation,
                actor=account_id,
                device_id=device_id,
                request_id=request_id,
                event=SystemEvent(
                    SystemAction.INFO_CHANGED,
                    account_id,
                    title=changed.title,
                    avatar_ref=changed.avatar_ref,
                ),
            )
            await self._store.set_info(
                conversation_id, title=changed.title, avatar_ref=changed.avatar_ref
            )
            await self._changed(conversation_id)
        return await self._conversations.get(conversation_id=conversation_id, account_id=account_id)

    async def list_members(
        self, *, account_id: str, conversation_id: str, after: str, limit: int
    ) -> list[tuple[str, int, int, datetime | None]]:
        """(account, role, joined_seq, joined_at) of active members by account id."""
        membership = await self._conversations.require_member(conversation_id, account_id)
        conversation = membership.conversation
        if conversation.type == CHANNEL:
            roles.require_admin(membership.role)
        if conversation.type == DIRECT:
            created: datetime | None = conversation.created_at
            return [
                (member, roles.plain_role(DIRECT), 0, created)
                for member in sorted(conversation.member_ids)
                if member > after
            ][:limit]
        records = await self._store.active_members(conversation_id, after=after, limit=limit)
        return [
            (
                r.account_id,
                conversation.role_of(r.account_id),
                0 if conversation.type == CHANNEL else r.joined_seq,
                r.joined_at,
            )
            for r in records
        ]
