"""Probing a primary mail server over SMTP: the Control Panel's "test connection", and
the same question the gateway's health monitor asks.

A probe connects (TLS from the first byte, or plain then STARTTLS, or plain), reads the
greeting, says EHLO and QUIT, and reports what the server answered. What the server says
is shown to an admin, so only an answer that is SMTP is passed on: anything else at that
address (a web server, a database) is reported as "not an SMTP server", without its
words, so that the button cannot be used to read other services of the network.
"""

from __future__ import annotations

import smtplib
import ssl
import time
from dataclasses import dataclass, field

from roster.addresses import printable

DEFAULT_TIMEOUT = 10.0


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
    helo_name: str = "continuity.invalid",
    timeout: float = DEFAULT_TIMEOUT,
    tls_context: ssl.SSLContext | None = None,
) -> ProbeResult:
    """Probe ``host``:``port``; ``tls`` is "tls", "starttls" or "none".

    Certificates are checked against the system's authorities unless ``tls_context``
    says otherwise; a failed check is a failed probe, as it would be for delivery.
    """
    context = tls_context or ssl.create_default_context()
    started = time.monotonic()
    answers: list[str] = []
    stage = "connect"

    def result(ok: bool, error: str = "", negotiated: str = "") -> ProbeResult:
        return ProbeResult(ok, stage, error, answers, negotiated, time.monotonic() - started)

    client: smtplib.SMTP
    try:
        if tls == "tls":
            client = smtplib.SMTP_SSL(local_hostname=helo_name, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(local_hostname=helo_name, timeout=timeout)
        # smtplib names the server for the certificate check only when the host is given
        # to the constructor, which would also connect there and raise on a refusal.
        client._host = host  # type: ignore[attr-defined]  # (not in the stubs)
        code, banner = client.connect(host, port)
    except smtplib.SMTPServerDisconnected as error:
        stage = "greeting"
        if isinstance(error.__context__, TimeoutError):
            return result(False, f"no answer within {timeout:g} s")
        return result(False, "the server closed the connection without a greeting")
    except smtplib.SMTPConnectError as error:
        stage = "greeting"
        answers.append(_reply(error.smtp_code, error.smtp_error))
        return result(False, "the server refused the connection")
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
