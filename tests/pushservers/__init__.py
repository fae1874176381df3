"""Local stand-ins for the push services, strict the way the real ones are.

Each server runs in the test's event loop (hypercorn serving a small ASGI
app) on a free 127.0.0.1 port, checks every request as the provider's
documentation says the real endpoint does, records what it accepted, and
can be scripted to answer errors::

    async with ApnsServer.start(tmp_path) as apns:
        apns.fail(503, "ServiceUnavailable", times=2, retry_after=3)
        apns.unregister(token)
        ...  # configure Parley with apns.config()
        await apns.wait_for(1)
        assert apns.delivered[0].json["aps"]["thread-id"] == conversation_id

- ``WebhookServer``: plain HTTP; checks the HMAC signature, the timestamp
  (5 minutes) and the body; ``config()`` gives ``url`` and ``secret``.
- ``ApnsServer``: HTTP/2 over TLS only (self-signed certificate; pass
  ``ca_file``); checks the ES256 provider token (kid, iss, iat within an
  hour, not renewed within 20 minutes on one connection), the path, the
  apns-* headers and the payload (JSON with ``aps``, at most 4096 bytes).
- ``FcmServer``: TLS; an OAuth2 token endpoint that checks the RS256
  jwt-bearer assertion (signature, kid, iss, aud, scope, lifetime) and the
  HTTP v1 send endpoint that checks the bearer token, the project and the
  message shape (string-only data, known fields, 4 KiB).

Scripted answers apply only to requests that passed the checks; the checks'
own refusals are in ``refused``.
"""

from tests.pushservers.apns import ApnsServer
from tests.pushservers.base import PushServer, Received, Refusal, write_p8_key
from tests.pushservers.fcm import FcmServer, fcm_error
from tests.pushservers.webhook import WebhookServer

__all__ = [
    "ApnsServer",
    "FcmServer",
    "PushServer",
    "Received",
    "Refusal",
    "WebhookServer",
    "fcm_error",
    "write_p8_key",
]
