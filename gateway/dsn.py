"""Delivery status notifications and delay notices (RFC 3464), written for the sender.

A notice is a ``multipart/report; report-type=delivery-status`` message of three parts:
words a person understands (English or Spanish), the ``message/delivery-status`` fields
a program reads, and the original message's headers (``text/rfc822-headers``), never
its body. The caller sends it with a null reverse-path (``MAIL FROM:<>``) to
``Notice.rcpt_to``, through ``[outbound] relay``.

Everything taken from the original message and from the remote server is hostile: only
the original's header block is read (at most ``HEADER_LIMIT`` bytes, however large the
body), and every value placed in a header or a field is stripped of control characters,
of encoded-word syntax and capped in length, so it can add no header of its own. The
notice is 7-bit ASCII throughout, so any relay takes it without 8BITMIME or SMTPUTF8.

The two languages' texts live in ``TEXTS`` below, not in the portal's gettext catalogue:
the gateway does not import the portal (DESIGN.md, imports point downwards only).
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage, Message
from email.parser import HeaderParser
from email.utils import format_datetime, make_msgid
from typing import NamedTuple

# Postfix's header_size_limit: more header than this is an attack, not a message.
HEADER_LIMIT = 102_400
REPLY_LIMIT = 600
SUBJECT_LIMIT = 120
LANGUAGES = ("en", "es")

# Folding at 78 moves a whole field value to a continuation line when it fits there,
# which some report parsers (Python's among them) read with a leading space; every value
# here is capped well below RFC 5322's hard limit of 998, so nothing needs folding.
_POLICY = policy.SMTP.clone(max_line_length=998)
_ENHANCED = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_REPLY_PREFIX = re.compile(r"^\s*(\d{3})(?:[ -]|$)")
_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_DOT_ATOM = re.compile(rf"^{_ATOM}(?:\.{_ATOM})*$")
_QUOTED = re.compile(r'^"(?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*"$')

# RFC 3463 subjects for replies that carry no enhanced code (RFC 5321 4.2.2 meanings).
_STATUS_BY_REPLY = {
    421: "4.3.2",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    530: "5.7.0",
    550: "5.0.0",
    551: "5.1.6",
    552: "5.2.2",
    553: "5.1.3",
    554: "5.0.0",
}
# No server answered at all (refused, timed out, no route): RFC 3463 X.4.1.
_STATUS_UNREACHABLE = "4.4.1"

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "from_name": "Mail Delivery System",
        "subject_failure": "Undelivered mail",
        "subject_delay": "Mail delivery delayed",
        "intro": "This is the mail system at {host}.",
        "failure": (
            "Your message could not be delivered to the recipients below. We have stopped "
            "trying: it will not be delivered."
        ),
        "failure_refused": (
            '{address}: the receiving server{remote} refused it and answered "{reply}".'
        ),
        "failure_expired": (
            "{address}: we tried for {duration}, but the receiving server{remote} kept "
            'answering "{reply}".'
        ),
        "failure_unreachable": (
            "{address}: we tried for {duration}, but could not reach the receiving server "
            "({reply})."
        ),
        "failure_advice": (
            "If you think the address is right, reach the person another way, or ask your "
            "mail administrator for help and show them the server's answer above."
        ),
        "delay": (
            "Your message to the recipients below has not been delivered yet: it has been "
            "waiting for {duration}. We keep trying until {until}. You do not need to do "
            "anything now; if it still cannot be delivered by then, you will get another "
            "notice."
        ),
        "delay_answer": '{address}: the receiving server{remote} answered "{reply}".',
        "delay_unreachable": "{address}: the receiving server could not be reached ({reply}).",
        "subject_line": "Subject of your message: {subject}",
        "sent_line": "Sent: {arrival}",
        "attached": (
            "The technical details and the headers of your message are attached; the "
            "message itself is not, so keep your own copy."
        ),
        "hour": "1 hour",
        "hours": "{n} hours",
        "day": "1 day",
        "days": "{n} days",
    },
    "es": {
        "from_name": "Sistema de entrega de correo",
        "subject_failure": "Correo no entregado",
        "subject_delay": "Entrega de correo retrasada",
        "intro": "Este es el sistema de correo de {host}.",
        "failure": (
            "Su mensaje no se ha podido entregar a los destinatarios siguientes. Hemos dejado "
            "de intentarlo: no se entregará."
        ),
        "failure_refused": (
            '{address}: el servidor de destino{remote} lo rechazó y respondió "{reply}".'
        ),
        "failure_expired": (
            "{address}: lo intentamos durante {duration}, pero el servidor de destino{remote} "
            'siguió respondiendo "{reply}".'
        ),
        "failure_unreachable": (
            "{address}: lo intentamos durante {duration}, pero no pudimos contactar con el "
            "servidor de destino ({reply})."
        ),
        "failure_advice": (
            "Si cree que la dirección es correcta, póngase en contacto con la persona por "
            "otra vía, o pida ayuda a su administrador de correo y muéstrele la respuesta "
            "del servidor que aparece arriba."
        ),
        "delay": (
            "Su mensaje a los destinatarios siguientes todavía no se ha entregado: lleva "
            "{duration} esperando. Seguiremos intentándolo hasta el {until}. Por ahora no "
            "tiene que hacer nada; si para entonces no se ha podido entregar, recibirá otro "
            "aviso."
        ),
        "delay_answer": '{address}: el servidor de destino{remote} respondió "{reply}".',
        "delay_unreachable": (
            "{address}: no se pudo contactar con el servidor de destino ({reply})."
        ),
        "subject_line": "Asunto de su mensaje: {subject}",
        "sent_line": "Enviado: {arrival}",
        "attached": (
            "Se adjuntan los detalles técnicos y los encabezados de su mensaje; el mensaje "
            "en sí no se adjunta, así que conserve su propia copia."
        ),
        "hour": "1 hora",
        "hours": "{n} horas",
        "day": "1 día",
        "days": "{n} días",
    },
}


class RecipientReport(NamedTuple):
    """What happened to one recipient: the last reply, or ``code=None`` if none came."""

    address: str
    code: int | None
    reply: str
    remote_mta: str | None = None
    last_attempt: datetime | None = None


@dataclass(frozen=True)
class Notice:
    """A notice ready to send: ``MAIL FROM:<>``, ``RCPT TO:<rcpt_to>``, then ``data``."""

    rcpt_to: str
    data: bytes


def should_notify(envelope_sender: str, original_headers: bytes) -> bool:
    """Whether a notice about this message may be sent to its envelope sender at all.

    No for the null sender (RFC 5321 4.5.5 and 6.1: never a notice about a notice), for
    a ``MAILER-DAEMON`` local part (sendmail's spelling of the null sender, which some
    relays write in its place), for a message that is itself a delivery status report
    whatever its sender says (a broken MTA that bounces with a real sender would
    otherwise start a loop), and for a sender address that is not a valid address.

    ``Auto-Submitted`` does not stop a notice: RFC 3834's rule against answering
    auto-submitted mail is for responders (vacation and other automatic replies) and
    leaves delivery reports to RFC 3461/3464, while RFC 5321 6.1 obliges the MTA that
    accepted a message to report a failed delivery to any non-null reverse-path. The
    sender of automatic mail (a list manager, a ticket system) is the one that needs to
    learn the address fails; the notice itself carries ``Auto-Submitted: auto-replied``.
    A sender whose local part is not ASCII gets no notice either: that needs RFC 6533's
    international reports, which this module does not write.
    """
    address = _notice_address(envelope_sender)
    if address is None or address.split("@", 1)[0].lower() == "mailer-daemon":
        return False
    headers = _parse_headers(original_headers)
    try:
        return not (
            headers.get_content_type() == "multipart/report"
            and str(headers.get_param("report-type", "")).lower() == "delivery-status"
        )
    except Exception:  # a hostile Content-Type is no report: the email package may raise on it
        return True


def build_failure(
    original: bytes,
    envelope_sender: str,
    recipients: Iterable[RecipientReport | tuple[object, ...]],
    *,
    arrival: datetime,
    reporting_mta: str,
    from_address: str,
    language: str = "en",
    envelope_id: str | None = None,
    now: datetime | None = None,
) -> Notice:
    """The notice that a message will not reach these recipients (``Action: failed``).

    A 5xx reply is a refusal; a 4xx reply or none at all (``code=None``) means the
    message outlived its lifetime: the Status keeps the last reply's 4.X.X class, as
    Postfix and sendmail do, and the words say how long we tried.
    """
    reports = [_report(entry, allowed=(4, 5)) for entry in recipients]
    return _build(
        original,
        envelope_sender,
        reports,
        action="failed",
        arrival=arrival,
        reporting_mta=reporting_mta,
        from_address=from_address,
        language=language,
        envelope_id=envelope_id,
        retry_until=None,
        now=now,
    )


def build_delay(
    original: bytes,
    envelope_sender: str,
    recipients: Iterable[RecipientReport | tuple[object, ...]],
    *,
    arrival: datetime,
    retry_until: datetime,
    reporting_mta: str,
    from_address: str,
    language: str = "en",
    envelope_id: str | None = None,
    now: datetime | None = None,
) -> Notice:
    """The notice that a message is still waiting for these recipients (``Action: delayed``)."""
    reports = [_report(entry, allowed=(4,)) for entry in recipients]
    return _build(
        original,
        envelope_sender,
        reports,
        action="delayed",
        arrival=arrival,
        reporting_mta=reporting_mta,
        from_address=from_address,
        language=language,
        envelope_id=envelope_id,
        retry_until=retry_until,
        now=now,
    )


def status_for(code: int | None, reply: str) -> str:
    """The RFC 3463 status: the reply's enhanced code if its class agrees, else one for the code."""
    if code is None:
        return _STATUS_UNREACHABLE
    text = _REPLY_PREFIX.sub("", reply.lstrip(), count=1)
    found = _ENHANCED.match(text.lstrip())
    if found and found.group(1) == str(code)[0]:
        return f"{found.group(1)}.{int(found.group(2))}.{int(found.group(3))}"
    return _STATUS_BY_REPLY.get(code, f"{str(code)[0]}.0.0")


def _build(
    original: bytes,
    envelope_sender: str,
    reports: Sequence[RecipientReport],
    *,
    action: str,
    arrival: datetime,
    reporting_mta: str,
    from_address: str,
    language: str,
    envelope_id: str | None,
    retry_until: datetime | None,
    now: datetime | None,
) -> Notice:
    """Assemble the three parts and the notice's own headers."""
    if language not in LANGUAGES:
        raise ValueError(f"language must be one of {', '.join(LANGUAGES)}, not {language!r}")
    if not reports:
        raise ValueError("a notice needs at least one recipient")
    rcpt_to = _notice_address(envelope_sender)
    if rcpt_to is None:
        raise ValueError("no notice for this envelope sender (see should_notify)")
    mta = _host(reporting_mta)
    sender = _notice_address(from_address)
    if mta is None or sender is None:
        raise ValueError("reporting_mta and from_address must be a host name and an address")
    now = _utc(now or datetime.now(UTC))
    arrival = _utc(arrival)
    texts = TEXTS[language]
    headers = _parse_headers(original)
    subject = _clean(_subject(headers), SUBJECT_LIMIT)

    notice = EmailMessage(policy=_POLICY)
    notice["From"] = Address(texts["from_name"], addr_spec=sender)
    notice["To"] = Address(addr_spec=rcpt_to)
    title = texts["subject_failure" if action == "failed" else "subject_delay"]
    notice["Subject"] = f"{title}: {subject}" if subject else title
    notice["Date"] = format_datetime(now)
    notice["Message-ID"] = make_msgid(domain=mta)
    notice["Auto-Submitted"] = "auto-replied"
    notice["MIME-Version"] = "1.0"
    notice.set_type("multipart/report")
    notice.set_param("report-type", "delivery-status")

    words = _words(texts, reports, action, mta, subject, arrival, retry_until, now)
    human = _part()
    human.set_content(words, charset="utf-8", cte="7bit" if words.isascii() else "quoted-printable")
    del human["MIME-Version"]
    notice.attach(human)
    notice.attach(_status_part(reports, action, mta, arrival, envelope_id, retry_until, now))
    notice.attach(_headers_part(original))
    return Notice(rcpt_to=rcpt_to, data=notice.as_bytes(policy=_POLICY))


def _words(
    texts: dict[str, str],
    reports: Sequence[RecipientReport],
    action: str,
    mta: str,
    subject: str,
    arrival: datetime,
    retry_until: datetime | None,
    now: datetime,
) -> str:
    """The part a person reads: what happened, to whom, and whether to do anything."""
    duration = _duration(texts, now - arrival)
    lines = [texts["intro"].format(host=mta), ""]
    if action == "failed":
        lines.append(texts["failure"])
    else:
        until = _utc(retry_until or now).strftime("%Y-%m-%d %H:%M UTC")
        lines.append(texts["delay"].format(duration=duration, until=until))
    lines.append("")
    for report in reports:
        remote = f" ({report.remote_mta})" if report.remote_mta else ""
        reply = _clean(_reply_text(report), REPLY_LIMIT)
        if report.code is not None:
            reply = f"{report.code} {reply}".rstrip()
        if report.code is None:
            key = "failure_unreachable" if action == "failed" else "delay_unreachable"
        elif action == "failed":
            key = "failure_refused" if report.code >= 500 else "failure_expired"
        else:
            key = "delay_answer"
        address = _clean(report.address, 320)
        lines.append(
            "  " + texts[key].format(address=address, remote=remote, reply=reply, duration=duration)
        )
    lines.append("")
    if subject:
        lines.append(texts["subject_line"].format(subject=subject))
    lines.append(texts["sent_line"].format(arrival=arrival.strftime("%Y-%m-%d %H:%M UTC")))
    lines.append("")
    if action == "failed":
        lines += [texts["failure_advice"], ""]
    lines.append(texts["attached"])
    return "\n".join(lines) + "\n"


def _status_part(
    reports: Sequence[RecipientReport],
    action: str,
    mta: str,
    arrival: datetime,
    envelope_id: str | None,
    retry_until: datetime | None,
    now: datetime,
) -> EmailMessage:
    """The ``message/delivery-status`` part: one per-message block, one block per recipient."""
    blocks: list[Message | str] = []
    per_message = Message(policy=_POLICY)
    if envelope_id:
        per_message["Original-Envelope-Id"] = _xtext(envelope_id[:100])
    per_message["Reporting-MTA"] = f"dns; {mta}"
    per_message["Arrival-Date"] = format_datetime(arrival)
    blocks.append(per_message)
    for report in reports:
        block = Message(policy=_POLICY)
        block["Final-Recipient"] = _final_recipient(report.address)
        block["Action"] = action
        block["Status"] = status_for(report.code, report.reply)
        if report.remote_mta:
            block["Remote-MTA"] = f"dns; {report.remote_mta}"
        reply = _ascii(_clean(_reply_text(report), REPLY_LIMIT))
        if report.code is None:
            block["Diagnostic-Code"] = f"X-Continuity; {reply}"
        else:
            block["Diagnostic-Code"] = f"smtp; {report.code} {reply}".rstrip()
        block["Last-Attempt-Date"] = format_datetime(_utc(report.last_attempt or now))
        if retry_until is not None:
            block["Will-Retry-Until"] = format_datetime(_utc(retry_until))
        blocks.append(block)
    part = _part()
    part["Content-Type"] = "message/delivery-status"
    part["Content-Transfer-Encoding"] = "7bit"
    part.set_payload(blocks)
    return part


def _headers_part(original: bytes) -> EmailMessage:
    """The original's header block as ``text/rfc822-headers``; its body never comes along."""
    text = _header_block(original).decode("utf-8", errors="replace")
    text = "\n".join(_CONTROL.sub("", line) for line in text.splitlines()).strip("\n") + "\n"
    long_line = any(len(line) > 998 for line in text.splitlines())
    part = _part()
    cte = "7bit" if text.isascii() and not long_line else "quoted-printable"
    part.set_content(text, subtype="rfc822-headers", charset="utf-8", cte=cte)
    del part["MIME-Version"]
    return part


def _part() -> EmailMessage:
    """An empty body part; only the notice itself carries MIME-Version."""
    return EmailMessage(policy=_POLICY)


def _report(
    entry: RecipientReport | tuple[object, ...], allowed: tuple[int, ...]
) -> RecipientReport:
    """One recipient's entry checked and cleaned: address, reply class, remote host."""
    report = entry if isinstance(entry, RecipientReport) else RecipientReport(*entry)  # type: ignore[arg-type]
    if report.code is not None and (
        not isinstance(report.code, int) or report.code // 100 not in allowed or report.code > 599
    ):
        raise ValueError(f"reply code {report.code!r} does not belong in this notice")
    return report._replace(
        address=str(report.address).strip().strip("<>"),
        reply=str(report.reply or ""),
        remote_mta=_host(report.remote_mta) if report.remote_mta else None,
    )


def _reply_text(report: RecipientReport) -> str:
    """The reply's text without the code repeated on each of its lines."""
    lines = [_REPLY_PREFIX.sub("", line, count=1) for line in re.split(r"[\r\n]+", report.reply)]
    return " ".join(line.strip() for line in lines if line.strip())


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _clean(value: str, limit: int) -> str:
    """One line of text safe to show and to place in a header: no control or format
    characters, no encoded-word syntax, whitespace collapsed, at most ``limit`` characters."""
    kept = [
        " " if unicodedata.category(char) in {"Cc", "Cf", "Cs", "Co", "Zl", "Zp"} else char
        for char in value
    ]
    text = " ".join("".join(kept).split())
    # "=?" would let the email package decode the value a second time into new lines.
    text = text.replace("=?", "= ?")
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text


def _ascii(value: str) -> str:
    """Delivery-status fields are ASCII (RFC 3464 2.1): anything else becomes ``?``."""
    return value.encode("ascii", errors="replace").decode("ascii")


def _xtext(value: str) -> str:
    """RFC 3461 xtext: printable ASCII except ``+`` and ``=``, the rest as ``+HH``."""
    out = []
    for byte in value.encode("utf-8"):
        out.append(
            chr(byte) if 0x21 <= byte <= 0x7E and byte not in (0x2B, 0x3D) else f"+{byte:02X}"
        )
    return "".join(out)


def _final_recipient(address: str) -> str:
    """``rfc822; addr`` for an ASCII address, RFC 6533's ``utf-8;`` xtext form otherwise."""
    cleaned = _clean(address, 320)
    if cleaned.isascii():
        return f"rfc822; {cleaned}"
    encoded = "".join(
        char if 0x21 <= ord(char) <= 0x7E and char not in "+=\\" else f"\\x{{{ord(char):02X}}}"
        for char in cleaned
    )
    return f"utf-8; {encoded}"


def _host(value: str | None) -> str | None:
    """A host name or an address literal fit for ``dns;`` fields, or None."""
    if not value:
        return None
    value = value.strip()
    if _HOST_NAME.match(value):
        return value.rstrip(".")
    literal = value[1:-1] if value.startswith("[") and value.endswith("]") else value
    try:
        return f"[{ipaddress.ip_address(literal)}]"
    except ValueError:
        return None


def _notice_address(value: str) -> str | None:
    """The address a notice may be written to, or None: ASCII local part, host-name domain.

    A domain in Unicode is turned into its ASCII (IDNA) form.
    """
    value = (value or "").strip()
    if value.startswith("<") and value.endswith(">"):
        value = value[1:-1]
    if not value or len(value) > 254 or "@" not in value:
        return None
    local, _, domain = value.rpartition("@")
    if not local or len(local) > 64 or not local.isascii():
        return None
    if not (_DOT_ATOM.match(local) or _QUOTED.match(local)):
        return None
    if not domain.isascii():
        try:
            domain = domain.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    host = _host(domain)
    if host is None or (not host.startswith("[") and "." not in host):
        return None
    return f"{local}@{host}"


def _header_block(original: bytes) -> bytes:
    """The bytes before the first empty line, read no further than ``HEADER_LIMIT``."""
    head = bytes(original[: HEADER_LIMIT + 4])
    ends = [i for i in (head.find(b"\r\n\r\n"), head.find(b"\n\n")) if i != -1]
    if ends:
        return head[: min(ends)]
    if len(original) <= HEADER_LIMIT:
        return head
    # Cut a header block past the limit at a line end, never in the middle of a line.
    cut = head[:HEADER_LIMIT]
    return cut[: cut.rfind(b"\n")] if b"\n" in cut else b""


def _parse_headers(original: bytes) -> EmailMessage:
    """The original's headers, parsed from the header block alone (UTF-8 headers kept)."""
    text = _header_block(original).decode("utf-8", errors="replace").replace("\x00", "")
    parsed = HeaderParser(policy=policy.default).parsestr(text + "\n\n", headersonly=True)
    assert isinstance(parsed, EmailMessage)  # noqa: S101 - policy.default makes EmailMessage
    return parsed


def _subject(headers: EmailMessage) -> str:
    """The original's decoded Subject, or nothing if even that cannot be read."""
    try:
        return str(headers.get("Subject", "") or "")
    except Exception:  # the email package's header parser may raise on hostile values
        return ""


def _duration(texts: dict[str, str], elapsed: timedelta) -> str:
    """Hours up to two days, days after that, in the notice's language."""
    hours = max(1, int(elapsed.total_seconds() // 3600))
    if hours < 48:
        return texts["hour"] if hours == 1 else texts["hours"].format(n=hours)
    days = hours // 24
    return texts["day"] if days == 1 else texts["days"].format(n=days)


def _utc(moment: datetime) -> datetime:
    """An aware UTC time; a naive one (as SQLite returns them) is taken as UTC."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
