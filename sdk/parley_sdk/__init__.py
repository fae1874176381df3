"""Parley client SDK: an asyncio client for the Parley chat services.

>>> client = await Client.sign_up(handle="alice", device_name="laptop")
>>> async with client.events() as stream:
...     async for event in stream:
...         ...
"""

from parley_sdk._session import NotSignedInError
from parley_sdk.client import (
    DEFAULT_KEYS_TARGET,
    DEFAULT_MESSAGE_TARGET,
    DEFAULT_STREAM_RETRY_POLICY,
    Client,
    ConnectOptions,
)
from parley_sdk.credentials import Credentials
from parley_sdk.errors import (
    AbortedError,
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    HandleTakenError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    ParleyError,
    PermissionDeniedError,
    ResourceExhaustedError,
    TokenExpiredError,
    TokenRevokedError,
    UnauthenticatedError,
    UnavailableError,
    from_rpc_error,
)
from parley_sdk.models import (
    Account,
    Conversation,
    ConversationEvent,
    ConversationView,
    Device,
    Direction,
    Message,
    MessageEvent,
    MessageType,
    Platform,
    PongEvent,
    ReceiptEvent,
    RegisteredDevice,
    StreamEvent,
    SyncCompleteEvent,
    Watermarks,
)
from parley_sdk.retry import RetryPolicy, new_request_id
from parley_sdk.stream import DeliveryStream

__all__ = [
    "DEFAULT_KEYS_TARGET",
    "DEFAULT_MESSAGE_TARGET",
    "DEFAULT_STREAM_RETRY_POLICY",
    "AbortedError",
    "Account",
    "AlreadyExistsError",
    "Client",
    "ConnectOptions",
    "Conversation",
    "ConversationEvent",
    "ConversationView",
    "Credentials",
    "DeadlineExceededError",
    "DeliveryStream",
    "Device",
    "Direction",
    "FailedPreconditionError",
    "HandleTakenError",
    "InternalError",
    "InvalidArgumentError",
    "Message",
    "MessageEvent",
    "MessageType",
    "NotFoundError",
    "NotSignedInError",
    "ParleyError",
    "PermissionDeniedError",
    "Platform",
    "PongEvent",
    "ReceiptEvent",
    "RegisteredDevice",
    "ResourceExhaustedError",
    "RetryPolicy",
    "StreamEvent",
    "SyncCompleteEvent",
    "TokenExpiredError",
    "TokenRevokedError",
    "UnauthenticatedError",
    "UnavailableError",
    "Watermarks",
    "from_rpc_error",
    "new_request_id",
]
