"""What a push says, whatever the provider: ids and a generic alert, never text.

Message bodies are ciphertext the server cannot read, and a ``Notification``
carries none of it anyway. A push therefore says only *that* something
arrived (and where, from whom, how many), in a generic line in the device's
language. Apps that want the real text decrypt it on the device: APNs pushes
are sent with ``mutable-content`` so a Notification Service Extension can
fetch the message by id and rewrite the alert; Android apps do the same from
the data payload.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from svc_message.model import Notification

TYPE_MESSAGE = "message"
# Conversation ids listed in one push; ``count`` still says how many messages
# there were. 20 UUIDs keep every provider's payload far below its 4 KiB cap.
MAX_CONVERSATION_IDS = 20

# language -> (one message, several messages with {n}). One/other is the whole
# plural rule of each language listed; languages with richer plural rules are
# left out rather than translated wrongly, and fall back to English.
_ALERTS: dict[str, tuple[str, str]] = {
    "en": ("New message", "{n} new messages"),
    "de": ("Neue Nachricht", "{n} neue Nachrichten"),
    "es": ("Nuevo mensaje", "{n} mensajes nuevos"),
    "fr": ("Nouveau message", "{n} nouveaux messages"),
    "it": ("Nuovo messaggio", "{n} nuovi messaggi"),
    "nl": ("Nieuw bericht", "{n} nieuwe berichten"),
    "pt": ("Nova mensagem", "{n} novas mensagens"),
    "ja": ("新着メッセージ", "新着メッセージ {n} 件"),
}
FALLBACK_LANGUAGE = "en"


def language_of(locale: str) -> str:
    """The language part of a BCP 47 or POSIX locale ("pt-BR", "de_AT.UTF-8")."""
    for separator in ("-", "_", "."):
        locale = locale.split(separator, 1)[0]
    return locale.strip().lower()


def alert_text(locale: str, count: int) -> str:
    """The generic line shown for ``count`` new messages, in the locale's
    language when the table has it, else in English."""
    one, several = _ALERTS.get(language_of(locale), _ALERTS[FALLBACK_LANGUAGE])
    return one if count <= 1 else several.format(n=count)


@dataclass(frozen=True, slots=True)
class PushPayload:
    """The provider-independent content of one push."""

    job_id: str
    # The newest message's conversation first, then the others newest first.
    conversation_ids: tuple[str, ...]
    message_id: str
    seq: int
    sender_account_id: str
    count: int
    alert: str
    type: str = TYPE_MESSAGE

    @property
    def conversation_id(self) -> str:
        """The conversation of the newest message (threads and collapsing)."""
        return self.conversation_ids[0] if self.conversation_ids else ""

    def fields(self) -> dict[str, Any]:
        """The ids as JSON values (webhook body, APNs custom keys)."""
        return {
            "type": self.type,
            "job_id": self.job_id,
            "conversation_id": self.conversation_id,
            "conversation_ids": list(self.conversation_ids),
            "message_id": self.message_id,
            "seq": self.seq,
            "sender_account_id": self.sender_account_id,
            "count": self.count,
        }

    def data(self) -> dict[str, str]:
        """The same as a flat map of strings (FCM ``data`` takes nothing else)."""
        return {
            "type": self.type,
            "job_id": self.job_id,
            "conversation_id": self.conversation_id,
            "conversation_ids": ",".join(self.conversation_ids),
            "message_id": self.message_id,
            "seq": str(self.seq),
            "sender_account_id": self.sender_account_id,
            "count": str(self.count),
        }


def build_payload(notification: Notification) -> PushPayload:
    newest_first = tuple(dict.fromkeys(c for c, _ in reversed(notification.messages)))
    seq = notification.messages[-1][1] if notification.messages else 0
    count = max(notification.count, 1)
    return PushPayload(
        job_id=notification.job_id,
        conversation_ids=newest_first[:MAX_CONVERSATION_IDS],
        message_id=notification.message_id,
        seq=seq,
        sender_account_id=notification.sender_account_id,
        count=count,
        alert=alert_text(notification.locale, count),
    )
