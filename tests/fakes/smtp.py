"""A real SMTP server (aiosmtpd) on a free loopback port, in the test's event loop.

It answers like a Postfix relay: ``250 2.0.0 Ok: queued as <id>`` after DATA, and can be
told to refuse a recipient (``550 5.1.1 <addr>: Recipient address rejected: User unknown``,
echoing the address as Postfix does), answer a given reply to MAIL, RCPT or DATA (``451 4.3.0``),
drop the connection at a recipient or all open sessions at once, require AUTH (``530``
until authenticated, ``535`` for wrong credentials), and speak STARTTLS or implicit TLS
with a certificate from a throwaway CA (``ca_file``) valid for ``127.0.0.1``.

    async with smtp_server(tls="starttls", credentials=("u", "p")) as server:
        server.reject("gone@example.org")
        ...  # point an EmailConfig at server.host / server.port
        server.messages[0].message["Subject"]
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import email
import ipaddress
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from email import policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

HOST = "127.0.0.1"


@dataclass
class Received:
    """One accepted message: the envelope, the bytes, and the parsed message."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str]
    queue_id: str

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


@dataclass
class FakeSmtp:
    """The server's state and knobs; the test reads and sets these while it runs."""

    host: str = HOST
    port: int = 0
    ca_file: str | None = None
    credentials: tuple[str, str] | None = None
    messages: list[Received] = field(default_factory=list)
    rcpt_replies: dict[str, str] = field(default_factory=dict)  # address -> reply line
    drop_at_rcpt: set[str] = field(default_factory=set)
    data_reply: str | None = None
    mail_replies: list[str] = field(default_factory=list)  # answers for the next MAILs
    peers: set[Any] = field(default_factory=set)  # one per TCP connection ever made
    logins: int = 0  # AUTH attempts (no auth_ prefix: aiosmtpd takes those for mechanisms)
    sessions: set[SMTP] = field(default_factory=set)

    @property
    def connections(self) -> int:
        """TCP connections accepted so far."""
        return len(self.peers)

    def reject(self, address: str) -> None:
        """Refuse ``address`` at RCPT the way Postfix does for an unknown user."""
        self.rcpt_replies[address] = (
            f"550 5.1.1 <{address}>: Recipient address rejected: User unknown in local recipient"
            " table"
        )

    def drop_all(self) -> None:
        """Close every open session (an idle timeout on the server side)."""
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()

    # --- aiosmtpd handler hooks -----------------------------------------------------------

    async def handle_MAIL(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        if self.credentials is not None and not session.authenticated:
            return "530 5.7.0 Authentication required"
        if self.mail_replies:
            reply = self.mail_replies.pop(0)
            if reply.startswith("421") and server.transport is not None:
                # 421 closes the session, right after the reply is written
                asyncio.get_running_loop().call_soon(server.transport.close)
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        if address in self.drop_at_rcpt:
            assert server.transport is not None
            server.transport.abort()
            return "421 4.4.2 dropped"  # never reaches the client
        reply = self.rcpt_replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.data_reply is not None:
            return self.data_reply
        queue_id = f"4Bq{len(self.messages):06d}X"
        content = envelope.original_content or b""
        self.messages.append(
            Received(
                mail_from=envelope.mail_from or "",
                rcpt_tos=list(envelope.rcpt_tos),
                data=content,
                mail_options=list(envelope.mail_options),
                queue_id=queue_id,
            )
        )
        return f"250 2.0.0 Ok: queued as {queue_id}"

    def authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        self.logins += 1
        ok = (
            isinstance(data, LoginPassword)
            and self.credentials is not None
            and (data.login.decode(), data.password.decode()) == self.credentials
        )
        # handled=False: aiosmtpd answers the failure itself (535 5.7.8).
        return AuthResult(success=ok, handled=ok)


class _Server(SMTP):
    """aiosmtpd's protocol, telling the fake which connections exist."""

    def __init__(self, fake: FakeSmtp, **kwargs: Any) -> None:
        self._fake = fake
        super().__init__(fake, **kwargs)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._original_transport is None:  # not the STARTTLS upgrade of a known one
            self._fake.peers.add(transport.get_extra_info("peername"))
            self._fake.sessions.add(self)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self._fake.sessions.discard(self)
        super().connection_lost(error)


def _certificates(directory: Path) -> tuple[ssl.SSLContext, str]:
    """A throwaway CA and a server certificate for 127.0.0.1; (server context, CA file)."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Leadback test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    ca_file = directory / "ca.pem"
    ca_file.write_bytes(ca.public_bytes(pem))
    cert_file = directory / "server.pem"
    cert_file.write_bytes(cert.public_bytes(pem))
    key_file = directory / "server.key"
    key_file.write_bytes(
        key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, str(ca_file)


@contextlib.asynccontextmanager
async def smtp_server(
    *,
    tls: Literal["none", "starttls", "tls"] = "none",
    credentials: tuple[str, str] | None = None,
    smtputf8: bool = False,
) -> AsyncIterator[FakeSmtp]:
    """Serve a :class:`FakeSmtp` on a free loopback port for the duration of the block."""
    fake = FakeSmtp(credentials=credentials)
    loop = asyncio.get_running_loop()
    with tempfile.TemporaryDirectory() as directory:
        context: ssl.SSLContext | None = None
        if tls != "none":
            context, fake.ca_file = _certificates(Path(directory))

        def protocol() -> _Server:
            return _Server(
                fake,
                hostname="fake-smtp.test",
                loop=loop,
                tls_context=context if tls == "starttls" else None,
                require_starttls=tls == "starttls",
                # AUTH waits for the STARTTLS upgrade; it is offered at once in the plain
                # and implicit TLS modes. It is enforced by handle_MAIL's 530 rather than
                # auth_required (which warns when AUTH may travel in clear).
                auth_require_tls=tls == "starttls",
                authenticator=fake.authenticate,
                enable_SMTPUTF8=smtputf8,
            )

        server = await loop.create_server(protocol, HOST, 0, ssl=context if tls == "tls" else None)
        fake.port = server.sockets[0].getsockname()[1]
        try:
            yield fake
        finally:
            server.close()
            fake.drop_all()
            await server.wait_closed()
