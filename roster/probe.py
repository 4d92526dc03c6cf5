"""Probing a primary mail server over SMTP: the Control Panel's "test connection", and
the same question the gateway's health monitor asks.

A probe connects (TLS from the first byte, or plain then STARTTLS, or plain), reads the
greeting, says EHLO and QUIT, and reports what the server answered. What the server says
is shown to an admin, so only an answer that is SMTP is passed on: anything else at that
address (a web server, a database) is reported as "not an SMTP server", without its
words, so that the button cannot be used to read other services of the network. The
name is resolved first and every address it gives is checked with
roster.primary_address before any connection (PrimaryAddressRefused is raised): the
Continuity host's own services are not reachable through the button at all.
"""

from __future__ import annotations

import contextlib
import smtplib
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from roster.addresses import printable
from roster.config import Config
from roster.primary_address import (
    IPAddress,
    PrimaryUnresolved,
    check_primary_address,
    resolve_primary,
)

DEFAULT_TIMEOUT = 5.0
MAX_REPLY_LINES = 50
"""Lines of one reply read at most: a server that sends endless "250-" lines is cut off."""


class _Bounded:
    """smtplib's reply reading, with a limit on the lines of a reply. (The probe's
    deadline is kept by a timer that shuts the socket, see probe_smtp.)"""

    def getreply(self: Any) -> tuple[int, bytes]:
        """Read one reply: (code, text), as smtplib.SMTP.getreply does."""
        lines: list[bytes] = []
        if self.file is None:
            self.file = self.sock.makefile("rb")
        while True:
            try:
                line = self.file.readline(smtplib._MAXLINE + 1)  # type: ignore[attr-defined]
            except OSError as error:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"Connection unexpectedly closed: {error}"
                ) from error
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("Connection unexpectedly closed")
            if len(line) > smtplib._MAXLINE:  # type: ignore[attr-defined]
                self.close()
                raise smtplib.SMTPResponseException(500, b"Line too long.")
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                return -1, b"\n".join(lines)
            if line[3:4] != b"-":
                return code, b"\n".join(lines)
            if len(lines) >= MAX_REPLY_LINES:
                self.close()
                raise smtplib.SMTPResponseException(500, b"Too many lines in one reply.")


class _SMTP(_Bounded, smtplib.SMTP):
    pass


class _SMTPSSL(_Bounded, smtplib.SMTP_SSL):
    pass


@dataclass(frozen=True)
class ProbeResult:
    """What a probe found."""

    ok: bool
    stage: str  # "connect", "greeting", "tls", "ehlo" or "done": how far it got
    error: str = ""  # empty when ok; otherwise a short English reason
    answers: list[str] = field(default_factory=list)  # the server's replies, as sent
    tls: str = ""  # the TLS version negotiated, if any
    seconds: float = 0.0


def _reply(code: int, message: bytes | str) -> str:
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return printable(f"{code} {text}".replace("\n", " / "), 400)


def probe_smtp(
    host: str,
    port: int,
    tls: str,
    *,
    config: Config,
    helo_name: str = "continuity.invalid",
    timeout: float = DEFAULT_TIMEOUT,
    tls_context: ssl.SSLContext | None = None,
) -> ProbeResult:
    """Probe ``host``:``port``; ``tls`` is "tls", "starttls" or "none".

    The name is resolved within ``timeout`` seconds and each of its addresses checked
    against ``config``'s primary address rules (PrimaryAddressRefused is raised, and
    nothing is connected to). Certificates are checked against the system's
    authorities unless ``tls_context`` says otherwise; a failed check is a failed probe,
    as it would be for delivery. The conversation ends within about ``timeout`` seconds
    more, however slowly the server answers.
    """
    started = time.monotonic()
    try:
        addresses = resolve_primary(host, port, timeout)
    except PrimaryUnresolved as error:
        return ProbeResult(False, "connect", str(error), seconds=time.monotonic() - started)
    for address in addresses:
        check_primary_address(config, address, host)
    state = _Deadline()
    # At the deadline the socket is shut, so whatever read is waiting ends.
    watchdog = threading.Timer(timeout, state.expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        for address in addresses:
            # The address checked is the one connected to: the name is not looked up
            # again (it could answer differently the second time).
            found = _probe(host, address, port, tls, helo_name, timeout, tls_context, state)
            if found.ok or found.stage != "connect" or state.expired:
                break
    finally:
        watchdog.cancel()
    if state.expired and not found.ok:
        return ProbeResult(
            False,
            found.stage,
            f"no answer within {timeout:g} s",
            found.answers,
            found.tls,
            found.seconds,
        )
    return found


def _probe(
    host: str,
    address: IPAddress,
    port: int,
    tls: str,
    helo_name: str,
    timeout: float,
    tls_context: ssl.SSLContext | None,
    state: _Deadline,
) -> ProbeResult:
    context = tls_context or ssl.create_default_context()
    started = time.monotonic()
    answers: list[str] = []
    stage = "connect"

    def result(ok: bool, error: str = "", negotiated: str = "") -> ProbeResult:
        return ProbeResult(ok, stage, error, answers, negotiated, time.monotonic() - started)

    client: smtplib.SMTP
    try:
        if tls == "tls":
            client = _SMTPSSL(local_hostname=helo_name, timeout=timeout, context=context)
        else:
            client = _SMTP(local_hostname=helo_name, timeout=timeout)
        state.client = client
        # smtplib names the server for the certificate check only when the host is given
        # to the constructor, which would also connect there and raise on a refusal.
        client._host = host  # type: ignore[union-attr]  # (not in the stubs)
        code, banner = client.connect(str(address), port)
    except smtplib.SMTPServerDisconnected as error:
        stage = "greeting"
        if isinstance(error.__context__, TimeoutError):
            return result(False, f"no answer within {timeout:g} s")
        return result(False, "the server closed the connection without a greeting")
    except smtplib.SMTPConnectError as error:
        stage = "greeting"
        answers.append(_reply(error.smtp_code, error.smtp_error))
        return result(False, "the server refused the connection")
    except smtplib.SMTPResponseException:
        stage = "greeting"  # a line too long, or too many lines: no SMTP greeting
        return result(False, "not an SMTP server")
    except ssl.SSLError as error:
        stage = "tls"
        return result(False, f"TLS failed: {error.reason or error}")
    except TimeoutError:
        return result(False, f"no answer within {timeout:g} s")
    except OSError as error:
        return result(False, error.strerror or str(error))
    try:
        stage = "greeting"
        if code != 220:
            if code == -1 or not 200 <= code < 600:
                return result(False, "not an SMTP server")
            answers.append(_reply(code, banner))
            return result(False, "the server does not accept mail now")
        answers.append(_reply(code, banner))
        negotiated = ""
        if tls == "starttls":
            stage = "tls"
            code, message = client.ehlo(helo_name)
            if not client.has_extn("starttls"):
                return result(False, "the server does not offer STARTTLS")
            code, message = client.starttls(context=context)
            answers.append(_reply(code, message))
        if tls in ("tls", "starttls"):
            sock = client.sock
            negotiated = sock.version() or "" if isinstance(sock, ssl.SSLSocket) else ""
        stage = "ehlo"
        code, message = client.ehlo(helo_name)
        answers.append(_reply(code, message))
        if code != 250:
            return result(False, "the server refused EHLO", negotiated)
        stage = "done"
        return result(True, "", negotiated)
    except ssl.SSLError as error:
        stage = "tls"
        return result(False, f"TLS failed: {error.reason or error}")
    except (smtplib.SMTPException, OSError) as error:
        return result(False, str(error) or type(error).__name__)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


class _Deadline:
    """The probe's client, and whether its time ran out."""

    def __init__(self) -> None:
        self.client: smtplib.SMTP | None = None
        self.expired = False

    def expire(self) -> None:
        """Time is up: shut the socket, so that a waiting read returns at once."""
        self.expired = True
        sock = getattr(self.client, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
