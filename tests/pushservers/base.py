"""What every push stand-in shares: serving an ASGI app with hypercorn in
the test's event loop, TLS and key files, recording and scripting answers."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import json
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypercorn.asyncio.run import worker_serve
from hypercorn.config import Config
from hypercorn.utils import wrap_app

HOST = "127.0.0.1"
MAX_REQUEST_BYTES = 1 << 20
CLOCK_SKEW_SECONDS = 60


# -- keys and certificates -----------------------------------------------------


def write_tls_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost that is its own CA:
    (certificate = the ca_file clients trust, private key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "parley push test server")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address(HOST))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "tls-cert.pem", directory / "tls-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def write_p8_key(path: Path) -> ec.EllipticCurvePrivateKey:
    """An APNs-style signing key (.p8: PKCS#8 PEM, EC P-256) written to ``path``."""
    key = ec.generate_private_key(ec.SECP256R1())
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return key


def service_account_json(
    *, project_id: str, client_email: str, key: rsa.RSAPrivateKey, key_id: str, token_uri: str
) -> dict[str, str]:
    """A Google service-account key file's fields."""
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": client_email,
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
    }


# -- requests, answers and the script ------------------------------------------


@dataclass
class Received:
    """A request that passed the server's checks, and what it was answered."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    http_version: str
    status: int = 0
    # The verified JWT claims (APNs provider token, FCM assertion).
    claims: dict[str, Any] = field(default_factory=dict)
    token: str = ""

    @property
    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Refusal:
    """A request the server's own checks refused."""

    path: str
    status: int
    reason: str


@dataclass
class _Rule:
    status: int
    body: bytes
    headers: dict[str, str]
    remaining: int | None
    token: str | None


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(status: int, value: Any, headers: dict[str, str] | None = None) -> Answer:
    return Answer(
        status, json.dumps(value).encode(), {"content-type": "application/json", **(headers or {})}
    )


class Refuse(Exception):
    def __init__(self, answer: Answer, reason: str) -> None:
        super().__init__(reason)
        self.answer = answer
        self.reason = reason


class PushServer:
    """The parts every stand-in shares: serving, recording, scripting."""

    tls = False
    alpn: tuple[str, ...] = ("h2", "http/1.1")

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = 0
        self.received: list[Received] = []
        self.refused: list[Refusal] = []
        self._rules: list[_Rule] = []
        self._changed = asyncio.Event()
        self.ca_file: Path | None = None
        # Seconds to wait before answering (client timeouts).
        self.delay = 0.0

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{HOST}:{self.port}"

    @property
    def delivered(self) -> list[Received]:
        """Accepted requests answered 2xx (for FCM: sends, not token requests)."""
        return [r for r in self.received if 200 <= r.status < 300 and self._is_push(r)]

    def _is_push(self, request: Received) -> bool:
        return True

    def script(
        self,
        status: int,
        body: Any = None,
        *,
        headers: dict[str, str] | None = None,
        times: int | None = 1,
        token: str | None = None,
    ) -> None:
        """Answer the next ``times`` valid pushes (None: all of them), or only
        those to ``token``, with this instead of success."""
        raw = b"" if body is None else json.dumps(body).encode()
        all_headers = {"content-type": "application/json"} if raw else {}
        all_headers.update(headers or {})
        self._rules.append(_Rule(status, raw, all_headers, times, token))

    def _scripted(self, token: str) -> Answer | None:
        for rule in self._rules:
            if rule.token is not None and rule.token != token:
                continue
            if rule.remaining is not None:
                if rule.remaining <= 0:
                    continue
                rule.remaining -= 1
            return Answer(rule.status, rule.body, dict(rule.headers))
        return None

    def to(self, token: str) -> list[Received]:
        """Delivered pushes addressed to one device token."""
        return [r for r in self.delivered if r.token == token]

    async def wait_for(
        self, count: int = 1, timeout: float = 15.0, *, token: str | None = None
    ) -> list[Received]:
        """Until ``count`` pushes (to ``token``, if given) were delivered;
        TimeoutError (saying what the server refused) otherwise."""

        def done() -> list[Received]:
            return self.delivered if token is None else self.to(token)

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while len(done()) < count:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(
                    f"{type(self).__name__}: {len(done())} of {count} delivered; "
                    f"refused: {[(r.status, r.reason) for r in self.refused]}"
                )
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)
        return done()

    # -- serving ---------------------------------------------------------------

    @classmethod
    @contextlib.asynccontextmanager
    async def start(cls, directory: Path | None = None, **options: Any) -> AsyncIterator[Self]:
        """Serve until the block ends. ``directory`` holds the generated key
        and certificate files (a temporary one by default)."""
        with contextlib.ExitStack() as cleanup:
            if directory is None:
                directory = Path(cleanup.enter_context(tempfile.TemporaryDirectory()))
            directory.mkdir(parents=True, exist_ok=True)
            server = cls(directory, **options)
            async with server._serving():
                yield server

    @contextlib.asynccontextmanager
    async def _serving(self) -> AsyncIterator[None]:
        config = Config()
        config.bind = [f"{HOST}:0"]
        config.graceful_timeout = 1.0
        config.errorlog = None
        config.alpn_protocols = list(self.alpn)
        if self.tls:
            cert, key = write_tls_certificate(self.directory)
            config.certfile, config.keyfile = str(cert), str(key)
            self.ca_file = cert
        sockets = config.create_sockets()
        sock = (sockets.secure_sockets or sockets.insecure_sockets)[0]
        # Listening now queues early connections instead of refusing them.
        sock.listen(config.backlog)
        self.port = sock.getsockname()[1]
        self._prepare()
        stop = asyncio.Event()
        # hypercorn types ASGI apps as functions over its TypedDict events.
        app = wrap_app(self, config.wsgi_max_body_size, "asgi")  # type: ignore[arg-type]
        task = asyncio.create_task(
            worker_serve(
                app,
                config,
                sockets=sockets,
                shutdown_trigger=stop.wait,
            )
        )
        await asyncio.sleep(0)
        if task.done():
            task.result()
        try:
            yield
        finally:
            stop.set()
            try:
                await asyncio.wait_for(task, 10)
            except TimeoutError:
                task.cancel()

    def _prepare(self) -> None:
        """Write the files that name the port (called once it is known)."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_REQUEST_BYTES:
                await self._reply(send, Answer(413))
                return
        headers: dict[str, str] = {}
        for name, value in scope["headers"]:
            headers[name.decode("latin-1").lower()] = value.decode("latin-1")
        request = Received(
            method=scope["method"],
            path=scope["path"],
            headers=headers,
            body=bytes(body),
            http_version=scope["http_version"],
        )
        client = scope.get("client") or ("", 0)
        try:
            answer = self._handle(request, f"{client[0]}:{client[1]}")
        except Refuse as refusal:
            self.refused.append(Refusal(request.path, refusal.answer.status, refusal.reason))
            answer = refusal.answer
        else:
            request.status = answer.status
            self.received.append(request)
        self._changed.set()
        if self.delay:
            await asyncio.sleep(self.delay)
        await self._reply(send, answer)

    async def _reply(self, send: Any, answer: Answer) -> None:
        headers = [(k.encode(), v.encode()) for k, v in answer.headers.items()]
        headers.append((b"content-length", str(len(answer.body)).encode()))
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": answer.body})

    def _handle(self, request: Received, connection: str) -> Answer:
        raise NotImplementedError

    def _answer(self, request: Received, token: str, success: Answer) -> Answer:
        request.token = token
        return self._scripted(token) or success
