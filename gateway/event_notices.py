"""Notices of continuity events: the domain's admins hear when an event starts, when the
hand-back starts and when the event ends; each covered person with an alternate address
hears at the start that their mail is kept and where the standby webmail is.

Who is told (for each change):

- every admin of the domain (a ``StaffRole`` with the admin role for it), at their own
  address; the global admins too when the domain has no admin of its own, so that a
  change is never told to nobody who can act on it. An own address in a roster domain is
  queued like mail for it (route primary): during the event it is held with the
  domain's mail, copied at once into the admin's standby mailbox if they are covered,
  and reaches the primary with the hand-back; any other goes through the relay;
- each admin's alternate address from the directory, through ``[outbound] relay``;
- ``[outbound] operator_address`` where set, through the relay, in English (the
  operator's language is not the domain's);
- at the start only, each covered person with an alternate address, through the relay,
  unless the event is already over when it is told.

Every change is told once, whoever made it (the monitor, a delivery failure, an admin
by hand) and however many gateways run: ``tell`` finds the changes not told yet in the
roster, and marks each told (``ContinuityEvent.notified_*``) in the transaction that
queues its notices, with a conditional update that only one gateway can win.

The texts live in ``TEXTS`` (English and Spanish, by the domain's language), not in the
portal's catalogue: the gateway does not import the portal. Nothing from a person's data
reaches a header or an SMTP command unchecked: addresses pass the notice-address rule of
``gateway.dsn`` (or the person is skipped and logged), display names are cleaned of
control and format characters and of encoded-word syntax.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email import policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from typing import Any

from sqlalchemy import Connection, Engine, and_, or_, select, update
from sqlalchemy.orm import Session

from gateway.dsn import _clean, _notice_address
from roster.addresses import domain_of
from roster.config import Config
from roster.continuity import ENDED, RECOVERING, STARTED, Transition
from roster.coverage import covered_clause
from roster.identity import ROLE_ADMIN, ROLE_GLOBAL_ADMIN
from roster.logs import log_event
from roster.models import (
    ROUTE_PRIMARY,
    ROUTE_RELAY,
    ContinuityEvent,
    Domain,
    LocalAccount,
    Person,
    StaffRole,
    utcnow,
)
from roster.queue import Incoming, Recipient, new_queue_id, resolve_recipient, store, writing

log = logging.getLogger("continuity.gateway")

LANGUAGES = ("en", "es")
NAME_LIMIT = 120
REASON_LIMIT = 300
_POLICY = policy.SMTP.clone(max_line_length=998)

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "from_name": "Continuity Service",
        "subject_started": "Continuity event started: {domain}",
        "subject_recovering": "Continuity event: hand-back started for {domain}",
        "subject_ended": "Continuity event ended: {domain}",
        "subject_person": "Your mail at {domain}: the mail server is down, nothing is lost",
        "started": (
            "A continuity event started for {domain} at {when}: its primary mail server"
            " is not taking mail."
        ),
        "cause": "Cause: {reason}",
        "started_by": "Started by: {actor}",
        "held": (
            "Continuity Service keeps every message that arrives for {domain} and hands it"
            " back to the primary server, oldest first, once the server answers again."
            " Covered people can read and send mail in the standby webmail."
        ),
        "webmail": "The standby webmail: {url}",
        "told_next": "You will be told when the hand-back starts and when the event ends.",
        "recovering": (
            "The primary mail server of {domain} answers again (since {when}). The mail"
            " held during the continuity event is being handed back to it, oldest first."
        ),
        "recovering_next": "The event ends when nothing is left to hand back; you will be told.",
        "ended": "The continuity event of {domain} ended at {when}.",
        "ended_times": "It started at {started} and lasted {duration}.",
        "ended_counts": "Messages held: {held}. Handed back to the primary server: {handed}.",
        "ended_by": "Ended by: {actor}",
        "greeting": "Hello {name},",
        "greeting_plain": "Hello,",
        "person_what": ("The mail server of {domain} is not working at the moment (since {when})."),
        "person_kept": (
            "Nothing is lost: mail arriving for you now is kept, and it will be handed"
            " back to your mailbox once the server works again."
        ),
        "person_webmail": "Meanwhile you can read and send mail in the standby webmail:",
        "person_sign_in_emergency": (
            "Sign in there with your address ({mail}) and your emergency password."
        ),
        "person_sign_in": "Sign in there with your address ({mail}).",
        "person_no_webmail": "Your organisation's mail administrators know and are at work.",
        "footer": "This message was written by Continuity Service; replies are not read.",
        "minutes": "{n} minutes",
        "hours": "{n} hours",
        "days": "{n} days",
    },
    "es": {
        "from_name": "Continuity Service",
        "subject_started": "Evento de Continuity iniciado: {domain}",
        "subject_recovering": "Evento de Continuity: empieza la devolución del correo de {domain}",
        "subject_ended": "Evento de Continuity terminado: {domain}",
        "subject_person": (
            "Su correo de {domain}: el servidor de correo no funciona, no se pierde nada"
        ),
        "started": (
            "Ha empezado un evento de Continuity para {domain} el {when}: su servidor"
            " de correo principal no acepta correo."
        ),
        "cause": "Causa: {reason}",
        "started_by": "Iniciado por: {actor}",
        "held": (
            "Continuity Service guarda todo el correo que llega para {domain} y lo devuelve"
            " al servidor principal, del más antiguo al más reciente, en cuanto vuelva a"
            " responder. Los usuarios cubiertos pueden leer y enviar correo en el webmail"
            " de reserva."
        ),
        "webmail": "El webmail de reserva: {url}",
        "told_next": "Se le avisará cuando empiece la devolución y cuando termine el evento.",
        "recovering": (
            "El servidor de correo principal de {domain} vuelve a responder (desde el"
            " {when}). El correo guardado durante el evento de Continuity se le está"
            " devolviendo, del más antiguo al más reciente."
        ),
        "recovering_next": ("El evento termina cuando no quede nada por devolver; se le avisará."),
        "ended": "El evento de Continuity de {domain} terminó el {when}.",
        "ended_times": "Empezó el {started} y duró {duration}.",
        "ended_counts": ("Mensajes guardados: {held}. Devueltos al servidor principal: {handed}."),
        "ended_by": "Terminado por: {actor}",
        "greeting": "Hola, {name}:",
        "greeting_plain": "Hola:",
        "person_what": (
            "El servidor de correo de {domain} no funciona en este momento (desde el {when})."
        ),
        "person_kept": (
            "No se pierde nada: el correo que le llega ahora se guarda y se entregará en"
            " su buzón en cuanto el servidor vuelva a funcionar."
        ),
        "person_webmail": "Mientras tanto puede leer y enviar correo en el webmail de reserva:",
        "person_sign_in_emergency": (
            "Inicie sesión allí con su dirección ({mail}) y su contraseña de emergencia."
        ),
        "person_sign_in": "Inicie sesión allí con su dirección ({mail}).",
        "person_no_webmail": (
            "Los administradores de correo de su organización ya lo saben y están trabajando."
        ),
        "footer": "Este mensaje lo ha escrito Continuity Service; las respuestas no se leen.",
        "minutes": "{n} minutos",
        "hours": "{n} horas",
        "days": "{n} días",
    },
}


def log_transition(transition: Transition) -> None:
    """The one log line of a continuity event's change, whoever noticed it (the monitor
    or a delivery runner)."""
    log_event(
        logging.getLogger("continuity.gateway"),
        logging.WARNING,
        "continuity_event",
        change=transition.kind,
        domain_id=transition.domain_id,
        event_id=transition.event_id,
        reason=transition.reason[:200] or None,
    )


@dataclass(frozen=True)
class NoticeSettings:
    """Where notices come from and what they point to."""

    sender: str
    hostname: str
    webmail: str | None = None  # [portal] base_url + "/webmail"
    operator: str | None = None  # [outbound] operator_address


def settings_from(config: Config, hostname: str) -> NoticeSettings:
    """The notice settings of a gateway called ``hostname``."""
    base_url = config.portal.get("base_url")
    return NoticeSettings(
        sender=str(config.outbound.get("sender") or f"continuity@{hostname}"),
        hostname=hostname,
        webmail=f"{str(base_url).rstrip('/')}/webmail" if base_url else None,
        operator=config.outbound.get("operator_address") or None,
    )


# ---------------------------------------------------------------------------
# Which changes are still to tell, and telling each exactly once
# ---------------------------------------------------------------------------
_UNTOLD_START = ContinuityEvent.notified_started_at.is_(None)
_UNTOLD_RECOVERY = and_(
    ContinuityEvent.recovery_started_at.is_not(None),
    or_(
        ContinuityEvent.notified_recovery_at.is_(None),
        ContinuityEvent.notified_recovery_at != ContinuityEvent.recovery_started_at,
    ),
)
_UNTOLD_END = and_(
    ContinuityEvent.ended_at.is_not(None), ContinuityEvent.notified_ended_at.is_(None)
)
_CLAIMS: dict[str, tuple[Any, dict[str, Any]]] = {
    STARTED: (_UNTOLD_START, {"notified_started_at": None}),
    RECOVERING: (
        _UNTOLD_RECOVERY,
        {"notified_recovery_at": ContinuityEvent.recovery_started_at},
    ),
    ENDED: (_UNTOLD_END, {"notified_ended_at": None}),
}


def tell(engine: Engine, settings: NoticeSettings) -> int:
    """Queue the notices of every event change not told yet, in the order the changes
    happened; how many messages were queued."""
    with engine.connect() as connection:
        events = connection.execute(
            select(
                ContinuityEvent.id,
                ContinuityEvent.domain_id,
                ContinuityEvent.reason,
                ContinuityEvent.notified_started_at.is_(None).label("start"),
                _UNTOLD_RECOVERY.label("recovery"),
                _UNTOLD_END.label("end"),
            )
            .where(or_(_UNTOLD_START, _UNTOLD_RECOVERY, _UNTOLD_END))
            .order_by(ContinuityEvent.id)
        ).all()
    queued = 0
    for event in events:
        for kind, due in ((STARTED, event.start), (RECOVERING, event.recovery), (ENDED, event.end)):
            if due:
                transition = Transition(kind, event.domain_id, event.id, event.reason or "")
                queued += tell_one(engine, transition, settings)
    return queued


def tell_one(engine: Engine, transition: Transition, settings: NoticeSettings) -> int:
    """Queue the notices of ``transition`` and mark it told in one transaction, unless
    another gateway (or an earlier round) told it already; how many were queued.

    The messages are written before the write transaction (about 1.5 ms each, mostly the
    email package's header parsing: a domain of 5,000 covered people with an alternate
    address takes some 7 s), so that SQLite's one writer, which the receiver needs for
    every 250, is held only for the claim and the inserts."""
    condition, values = _CLAIMS[transition.kind]
    now = utcnow()
    with engine.connect() as connection:
        untold = connection.scalar(
            select(ContinuityEvent.id).where(ContinuityEvent.id == transition.event_id, condition)
        )
        if untold is None:
            return 0
        notices = build(connection, transition, settings, now=now)
    values = {key: now if value is None else value for key, value in values.items()}
    with writing(engine) as connection:
        claimed = connection.execute(
            update(ContinuityEvent)
            .where(ContinuityEvent.id == transition.event_id, condition)
            .values(**values)
        ).rowcount
        if claimed != 1:
            return 0
        store(connection, notices)
    log_event(
        log,
        logging.INFO,
        "continuity_event_told",
        change=transition.kind,
        domain_id=transition.domain_id,
        event_id=transition.event_id,
        messages=len(notices),
        recipients=sum(len(notice.recipients) for notice in notices),
    )
    return len(notices)


def tell_logged(engine: Engine, settings: NoticeSettings) -> None:
    """``tell``, logging a failure instead of raising it: the next round tries again."""
    try:
        tell(engine, settings)
    except Exception as error:  # a database hiccup must not stop what called us
        log_event(
            log,
            logging.ERROR,
            "continuity_event_tell_failed",
            error=type(error).__name__,
            detail=str(error)[:200],
        )


class Teller:
    """Runs ``tell`` in a thread of its own when poked, so that the monitor's checks and
    its lease do not wait while thousands of notices are written; pokes that arrive
    while it works make one more round, never a second thread."""

    def __init__(self, engine: Engine, settings: NoticeSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._lock = threading.Lock()
        self._wanted = False
        self._thread: threading.Thread | None = None

    def poke(self) -> None:
        """Tell what is untold, soon."""
        with self._lock:
            self._wanted = True
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="event-notices", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            with self._lock:
                if not self._wanted:
                    self._thread = None
                    return
                self._wanted = False
            tell_logged(self.engine, self.settings)

    def join(self, timeout: float) -> None:
        """Wait (up to ``timeout`` seconds) for a round in progress to finish."""
        with self._lock:
            thread = self._thread
        if thread is not None:
            thread.join(timeout)


# ---------------------------------------------------------------------------
# Building the messages
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Reader:
    """One person to write to: the checked address, a cleaned name, and how it goes."""

    address: str
    name: str
    recipient: Recipient | None  # route primary when set, else the relay
    mail: str = ""  # a covered person's own address, their sign-in name


def build(
    connection: Connection,
    transition: Transition,
    settings: NoticeSettings,
    *,
    now: datetime | None = None,
) -> list[Incoming]:
    """The messages that tell ``transition`` (started, recovering or ended) to the
    domain's admins, the operator and, at the start, the covered people."""
    now = now or utcnow()
    session = Session(bind=connection)
    try:
        domain = session.get(Domain, transition.domain_id)
        event = session.get(ContinuityEvent, transition.event_id)
        if domain is None or event is None:
            return []
        language = domain.language if domain.language in LANGUAGES else "en"
        seen: set[str] = set()
        notices: list[Incoming] = []
        kind = transition.kind
        for reader in _admins(session, domain, seen):
            message = _admin_notice(kind, event, domain, reader, language, settings, now)
            notices.append(_incoming(message, reader, now))
        operator = _notice_address(settings.operator or "")
        if operator and operator.lower() not in seen:
            seen.add(operator.lower())
            reader = _Reader(operator, "", None)
            message = _admin_notice(kind, event, domain, reader, "en", settings, now)
            notices.append(_incoming(message, reader, now))
        if transition.kind == STARTED and event.ended_at is None:
            for reader in _covered_people(session, domain, seen):
                message = _person_notice(event, domain, reader, language, settings, now)
                notices.append(_incoming(message, reader, now))
        return notices
    finally:
        session.close()


def _admins(session: Session, domain: Domain, seen: set[str]) -> list[_Reader]:
    """The admins of ``domain`` (the global admins if it has none), each at their own
    address and at their alternate one."""
    readers: list[_Reader] = []
    for role, scope in ((ROLE_ADMIN, StaffRole.domain_id == domain.id), (ROLE_GLOBAL_ADMIN, None)):
        query = (
            select(Person.mail, Person.display_name, Person.alternate_contact, LocalAccount.address)
            .select_from(StaffRole)
            .outerjoin(Person, Person.id == StaffRole.person_id)
            .outerjoin(LocalAccount, LocalAccount.id == StaffRole.local_account_id)
            .where(
                StaffRole.role == role,
                or_(
                    and_(Person.removed_at.is_(None), Person.disabled.is_(False)),
                    LocalAccount.id.is_not(None),
                ),
            )
            .order_by(StaffRole.id)
        )
        if scope is not None:
            query = query.where(scope)
        for mail, display_name, alternate, account in session.execute(query):
            name = _clean(display_name or "", NAME_LIMIT)
            own = _notice_address(mail or account or "")
            if own and own.lower() not in seen:
                seen.add(own.lower())
                readers.append(_Reader(own, name, _queued_for(session, own)))
            elif mail or account:
                _skipped(mail or account, "own")
            if alternate:
                checked = _notice_address(alternate)
                if checked is None:
                    _skipped(mail or account, "alternate")
                elif checked.lower() not in seen:
                    seen.add(checked.lower())
                    readers.append(_Reader(checked, name, None))
        if readers:
            break
    return readers


def _queued_for(session: Session, address: str) -> Recipient | None:
    """The queue's recipient for an address in a roster domain (held with that domain's
    mail, copied to the standby mailbox when covered), or None: it goes by the relay."""
    domain = session.scalar(select(Domain).where(Domain.name == domain_of(address).lower()))
    if domain is None:
        return None
    return resolve_recipient(session, domain, address)


def _covered_people(session: Session, domain: Domain, seen: set[str]) -> Iterable[_Reader]:
    """Each covered person of ``domain`` with an alternate address not told already."""
    rows = session.execute(
        select(Person.mail, Person.display_name, Person.alternate_contact)
        .where(
            covered_clause(domain),
            Person.alternate_contact.is_not(None),
            Person.alternate_contact != "",
        )
        .order_by(Person.id)
    )
    for mail, display_name, alternate in rows:
        checked = _notice_address(alternate or "")
        if checked is None:
            _skipped(mail, "alternate")
            continue
        if checked.lower() in seen:
            continue
        seen.add(checked.lower())
        yield _Reader(checked, _clean(display_name or "", NAME_LIMIT), None, mail=mail)


def _skipped(who: str, which: str) -> None:
    log_event(
        log,
        logging.WARNING,
        "continuity_notice_skipped",
        person=_clean(who, 320),
        address=which,
        why="not an address a notice can be written to",
    )


def _admin_notice(
    kind: str,
    event: ContinuityEvent,
    domain: Domain,
    reader: _Reader,
    language: str,
    settings: NoticeSettings,
    now: datetime,
) -> EmailMessage:
    """The words for an admin (or the operator) of one change of the event."""
    texts = TEXTS[language]
    name = domain.name
    if kind == ENDED:
        ended = event.ended_at or now
        subject = texts["subject_ended"].format(domain=name)
        lines = [
            texts["ended"].format(domain=name, when=_when(ended)),
            texts["ended_times"].format(
                started=_when(event.started_at),
                duration=_duration(texts, ended - event.started_at),
            ),
            texts["ended_counts"].format(held=event.held, handed=event.handed_back),
            texts["ended_by"].format(actor=_clean(event.ended_by or "", 320)),
        ]
    elif kind == RECOVERING:
        subject = texts["subject_recovering"].format(domain=name)
        lines = [
            texts["recovering"].format(domain=name, when=_when(event.recovery_started_at or now)),
            "",
            texts["recovering_next"],
        ]
    else:
        subject = texts["subject_started"].format(domain=name)
        lines = [
            texts["started"].format(domain=name, when=_when(event.started_at)),
            "",
            texts["cause"].format(reason=_clean(event.reason or "", REASON_LIMIT)),
            texts["started_by"].format(actor=_clean(event.started_by or "", 320)),
            "",
            texts["held"].format(domain=name),
        ]
        if settings.webmail:
            lines.append(texts["webmail"].format(url=settings.webmail))
        lines += ["", texts["told_next"]]
    return _message(subject, lines, texts, reader, settings, now)


def _person_notice(
    event: ContinuityEvent,
    domain: Domain,
    reader: _Reader,
    language: str,
    settings: NoticeSettings,
    now: datetime,
) -> EmailMessage:
    """The words for a covered person at the start: what happened, that nothing is lost,
    and where to read and send meanwhile."""
    texts = TEXTS[language]
    greeting = (
        texts["greeting"].format(name=reader.name) if reader.name else texts["greeting_plain"]
    )
    lines = [
        greeting,
        "",
        texts["person_what"].format(domain=domain.name, when=_when(event.started_at)),
        texts["person_kept"],
        "",
    ]
    if settings.webmail:
        sign_in = (
            "person_sign_in_emergency" if domain.emergency_password_enabled else "person_sign_in"
        )
        lines += [
            texts["person_webmail"],
            settings.webmail,
            "",
            texts[sign_in].format(mail=_clean(reader.mail, 320)),
        ]
    else:
        lines.append(texts["person_no_webmail"])
    subject = texts["subject_person"].format(domain=domain.name)
    return _message(subject, lines, texts, reader, settings, now)


def _message(
    subject: str,
    lines: list[str],
    texts: dict[str, str],
    reader: _Reader,
    settings: NoticeSettings,
    now: datetime,
) -> EmailMessage:
    """One notice with its headers (RFC 3834: auto-generated, no automatic replies)."""
    message = EmailMessage(policy=_POLICY)
    message["From"] = Address(texts["from_name"], addr_spec=settings.sender)
    message["To"] = Address(reader.name, addr_spec=reader.address)
    message["Subject"] = subject
    message["Date"] = format_datetime(now.astimezone(UTC))
    message["Message-ID"] = make_msgid(domain=settings.hostname)
    message["Auto-Submitted"] = "auto-generated"
    message["MIME-Version"] = "1.0"
    body = "\n".join([*lines, "", "-- ", texts["footer"]]) + "\n"
    message.set_content(body, charset="utf-8", cte="7bit" if body.isascii() else "quoted-printable")
    return message


def _incoming(message: EmailMessage, reader: _Reader, now: datetime) -> Incoming:
    """The queue's entry for one notice: held with the domain's mail for an address in
    a roster domain, through the relay for any other; a null sender, so that a notice
    that cannot be delivered makes no notice of its own."""
    return Incoming(
        queue_id=new_queue_id(),
        sender="",
        body=message.as_bytes(policy=_POLICY),
        recipients=[reader.recipient or Recipient(reader.address, 0, known=True)],
        message_id=str(message["Message-ID"]),
        origin="notice",
        route=ROUTE_PRIMARY if reader.recipient else ROUTE_RELAY,
        received_at=now,
    )


def _when(moment: datetime) -> str:
    """A moment as the notices write it."""
    moment = moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def _duration(texts: dict[str, str], elapsed: timedelta) -> str:
    """Minutes up to two hours, hours up to two days, days after that."""
    minutes = max(1, int(elapsed.total_seconds() // 60))
    if minutes < 120:
        return texts["minutes"].format(n=minutes)
    if minutes < 48 * 60:
        return texts["hours"].format(n=minutes // 60)
    return texts["days"].format(n=minutes // (24 * 60))
