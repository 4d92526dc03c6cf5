"""Asking the primary whether it takes an address the roster does not know, at RCPT time
(Postfix's ``reject_unverified_recipient``): no backscatter for mail to nobody.

One conversation: greeting, EHLO, STARTTLS if asked (then EHLO again), ``MAIL FROM:<>``,
``RCPT TO:<address>``, RSET, QUIT, all within one deadline however slowly the primary
answers (the SMTP reading and the deadline are roster.probe's). The primary's 2xx is an
accept, its 5xx a refusal with its words; anything else (4xx, no answer, a refused or
dropped connection, a TLS failure) is a temporary failure: the sender is asked to retry.

Answers are cached per address and primary for a while (accepts longer than refusals),
in a bounded LRU; temporary failures are not cached. Concurrent checks of one address
share one conversation. :meth:`Callout.check` blocks: the receiver runs it in a thread
(a small executor of its own, so that a hanging primary cannot take the loop's default
pool), and a :class:`Callout` may be shared by any number of threads.
"""

from __future__ import annotations

import contextlib
import enum
import re
import smtplib
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from roster.addresses import printable
from roster.probe import _SMTP, _SMTPSSL, _Deadline

DEFAULT_TIMEOUT = 15.0
_STATUS = re.compile(r"([245])\.\d{1,3}\.\d{1,3}(?=\s|$)")


class Verdict(enum.Enum):
    """What the primary said of an address."""

    ACCEPT = "accept"
    REJECT = "reject"
    TEMPFAIL = "tempfail"


@dataclass(frozen=True)
class CalloutResult:
    """A callout's verdict; ``answer`` is the primary's reply to RCPT, or why there was
    none (English, printable); ``cached`` when no conversation was needed."""

    verdict: Verdict
    answer: str
    cached: bool = False

    def reply(self, address: str) -> str | None:
        """The reply for our client's RCPT: None to accept, 550 with the primary's
        words, or 450 asking the sender to retry."""
        shown = printable(address, 100).encode("ascii", "replace").decode("ascii")
        answer = self.answer.encode("ascii", "replace").decode("ascii")[:300]
        if self.verdict is Verdict.ACCEPT:
            return None
        if self.verdict is Verdict.REJECT:
            status = _status(answer, "5") or "5.1.1"
            return (
                f"550 {status} <{shown}>: Recipient address rejected: "
                f"the domain's mail server said: {answer}"
            )
        status = _status(answer, "4") or "4.4.1"
        return (
            f"450 {status} <{shown}>: Recipient address not verified now, try again later: {answer}"
        )


class Callout:
    """Checks addresses with their primary, caching the answers."""

    def __init__(
        self,
        *,
        positive_seconds: float = 3_600.0,
        negative_seconds: float = 600.0,
        max_entries: int = 10_000,
        timeout: float = DEFAULT_TIMEOUT,
        helo_name: str = "continuity.invalid",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.positive_seconds = positive_seconds
        self.negative_seconds = negative_seconds
        self.max_entries = max_entries
        self.timeout = timeout
        self.helo_name = helo_name
        self._clock = clock
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[str, str, int], tuple[CalloutResult, float]] = OrderedDict()
        self._running: dict[tuple[str, str, int], _Shared] = {}

    def check(
        self,
        address: str,
        host: str,
        port: int,
        *,
        tls: str = "none",
        tls_context: ssl.SSLContext | None = None,
        server_name: str | None = None,
    ) -> CalloutResult:
        """Ask the primary at ``host``:``port`` (an address the caller has resolved and
        checked) about ``address`` (normalised by gateway.recipients). ``tls`` is "tls",
        "starttls" or "none"; the certificate is checked against ``server_name`` (the
        primary's name; ``host`` when not given) with ``tls_context`` (the system's
        authorities when not given)."""
        key = (address, host, port)
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                result, expires = found
                if self._clock() < expires:
                    self._cache.move_to_end(key)
                    return CalloutResult(result.verdict, result.answer, cached=True)
                del self._cache[key]
            shared = self._running.get(key)
            leader = shared is None
            if shared is None:
                shared = self._running[key] = _Shared()
        if not leader:
            if shared.done.wait(self.timeout * 2 + 5) and shared.result is not None:
                return shared.result
            return CalloutResult(Verdict.TEMPFAIL, "the check of this address did not end")
        result = CalloutResult(Verdict.TEMPFAIL, "the check failed")
        try:
            result = _converse(
                address,
                host,
                port,
                tls,
                tls_context,
                server_name or host,
                self.helo_name,
                self.timeout,
            )
        finally:
            with self._lock:
                self._remember(key, result)
                del self._running[key]
            shared.result = result
            shared.done.set()
        return result

    def forget(self) -> None:
        """Drop every cached answer (a domain's primary or its users changed)."""
        with self._lock:
            self._cache.clear()

    def cached(self) -> int:
        """Answers cached now (expired ones included until they are next looked up)."""
        with self._lock:
            return len(self._cache)

    def _remember(self, key: tuple[str, str, int], result: CalloutResult) -> None:
        if result.verdict is Verdict.TEMPFAIL:
            return
        seconds = (
            self.positive_seconds if result.verdict is Verdict.ACCEPT else self.negative_seconds
        )
        if seconds <= 0:
            return
        self._cache[key] = (result, self._clock() + seconds)
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)


class _Shared:
    """One conversation that several checks of the same address wait for."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.result: CalloutResult | None = None


def _converse(
    address: str,
    host: str,
    port: int,
    tls: str,
    tls_context: ssl.SSLContext | None,
    server_name: str,
    helo_name: str,
    timeout: float,
) -> CalloutResult:
    """One conversation within ``timeout`` seconds: the socket is shut at the deadline,
    so that whatever read is waiting ends."""
    if not address.isprintable() or any(c in address for c in "<> \t"):
        return CalloutResult(Verdict.TEMPFAIL, "the address cannot be asked about")
    state = _Deadline()
    watchdog = threading.Timer(timeout, state.expire)
    watchdog.daemon = True
    watchdog.start()
    try:
        result = _ask(address, host, port, tls, tls_context, server_name, helo_name, timeout, state)
    finally:
        watchdog.cancel()
    if state.expired and result.verdict is Verdict.TEMPFAIL:
        return CalloutResult(Verdict.TEMPFAIL, f"no answer within {timeout:g} s")
    return result


def _ask(
    address: str,
    host: str,
    port: int,
    tls: str,
    tls_context: ssl.SSLContext | None,
    server_name: str,
    helo_name: str,
    timeout: float,
    state: _Deadline,
) -> CalloutResult:
    def tempfail(why: str) -> CalloutResult:
        return CalloutResult(Verdict.TEMPFAIL, why)

    context = tls_context or ssl.create_default_context()
    client: smtplib.SMTP
    if tls == "tls":
        client = _SMTPSSL(local_hostname=helo_name, timeout=timeout, context=context)
    else:
        client = _SMTP(local_hostname=helo_name, timeout=timeout)
    state.client = client
    client._host = server_name  # type: ignore[union-attr]  # the name TLS checks
    try:
        client.connect(host, port)  # a greeting other than 220 raises SMTPConnectError
        if tls == "starttls":
            client.ehlo(helo_name)
            if not client.has_extn("starttls"):
                return tempfail("the primary does not offer STARTTLS")
            code, _message = client.starttls(context=context)
        code, message = client.ehlo(helo_name)
        if code != 250:
            return tempfail(f"the primary refused EHLO: {_text(code, message)}")
        options = ""
        if not address.isascii():
            if not client.has_extn("smtputf8"):
                return CalloutResult(
                    Verdict.REJECT,
                    "553 5.6.7 the domain's mail server takes no internationalised address",
                )
            client.command_encoding = "utf-8"
            options = " SMTPUTF8"
        code, message = client.docmd("MAIL", f"FROM:<>{options}")
        if code != 250:
            return tempfail(f"the primary refused a null sender: {_text(code, message)}")
        code, message = client.docmd("RCPT", f"TO:<{address}>")
        answer = _text(code, message)
        if 200 <= code < 300:
            verdict = Verdict.ACCEPT
        elif 500 <= code < 600:
            verdict = Verdict.REJECT
        else:
            return tempfail(answer if code > 0 else "the primary's answer was not SMTP")
        # The verdict is in: a primary that drops us now changes nothing.
        with contextlib.suppress(smtplib.SMTPException, OSError):
            client.docmd("RSET")
        return CalloutResult(verdict, answer)
    except smtplib.SMTPConnectError as error:
        return tempfail(
            f"the primary refused the connection: {_text(error.smtp_code, error.smtp_error)}"
        )
    except smtplib.SMTPServerDisconnected:
        return tempfail("the primary closed the connection")
    except smtplib.SMTPResponseException as error:
        return tempfail(_text(error.smtp_code, error.smtp_error))
    except ssl.SSLError as error:
        return tempfail(f"TLS failed: {error.reason or error}")
    except TimeoutError:
        return tempfail(f"no answer within {timeout:g} s")
    except (smtplib.SMTPException, OSError) as error:
        why = error.strerror if isinstance(error, OSError) else None
        return tempfail(why or str(error) or type(error).__name__)
    finally:
        try:
            client.quit()
        except (smtplib.SMTPException, OSError):
            client.close()


def _text(code: int, message: bytes | str) -> str:
    """A reply as a line safe to pass on: printable, one line, capped."""
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else message
    return printable(f"{code} {text}".replace("\n", " / "), 300)


def _status(answer: str, klass: str) -> str | None:
    """The enhanced status code in a reply (after its code), when it is of ``klass``."""
    found = _STATUS.match(answer[4:]) if len(answer) > 4 else None
    return found.group(0) if found is not None and found.group(1) == klass else None
