"""The roster: every table of the service, as SQLAlchemy 2 models.

Later capabilities add columns and tables through Alembic migrations; the shape here
already holds the whole design so that the portal and the gateway find their places.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
    true,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

COVERAGE_ALL = "all"
COVERAGE_SELECTED = "selected"
WEBMAIL_ALWAYS = "always"
WEBMAIL_OUTAGE = "outage"


def utcnow() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware (SQLite drops zones)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store as UTC."""
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Read back as UTC-aware."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    """Declarative base with stable constraint names for migrations."""

    metadata = MetaData(naming_convention=NAMING)


class Domain(Base):
    """A mail domain and its Continuity Service settings."""

    __tablename__ = "domain"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(253), unique=True)
    continuity_active: Mapped[bool] = mapped_column(Boolean, default=False)
    coverage_mode: Mapped[str] = mapped_column(String(16), default=COVERAGE_ALL)
    emergency_password_enabled: Mapped[bool] = mapped_column(Boolean, default=False)
    primary_host: Mapped[str | None] = mapped_column(String(253))
    primary_port: Mapped[int] = mapped_column(Integer, default=25)
    primary_tls: Mapped[str] = mapped_column(String(16), default="starttls")
    failover_automatic: Mapped[bool] = mapped_column(Boolean, default=True)
    probe_interval_seconds: Mapped[int] = mapped_column(Integer, default=60)
    failures_before_failover: Mapped[int] = mapped_column(Integer, default=3)
    # Check the primary's certificate (against the system's CAs or [gateway] ca_file);
    # an admin may switch it off for a primary with a self-signed certificate (audited).
    primary_tls_verify: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Ask the primary about unknown recipients at RCPT time (no backscatter); off means
    # accept them and send a DSN if the primary refuses later.
    verify_recipients: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    # Failover: checks in a row that end recovery, reply codes that count as a failure
    # of the whole server even for one recipient (a full disk: 452, 552), the language
    # of the mail the product writes to the domain's people.
    recover_after: Mapped[int] = mapped_column(Integer, default=3, server_default="3")
    failover_codes: Mapped[str] = mapped_column(String(64), default="", server_default="")
    language: Mapped[str] = mapped_column(String(8), default="en", server_default="en")
    # Hand what people send from the webmail during an event to the primary too, as a
    # copy for their Sent folder (marked X-Continuity-Sent-Copy for the primary's filter).
    sent_copies_to_primary: Mapped[bool] = mapped_column(
        Boolean, default=False, server_default=false()
    )
    # When covered people may open the standby webmail: "always" (they can try it before
    # an outage) or "outage" (only while the domain is in a continuity event).
    webmail_access: Mapped[str] = mapped_column(
        String(16), default=WEBMAIL_ALWAYS, server_default=WEBMAIL_ALWAYS
    )
    # The key that signs what the webmail sends (roster.dkim): its selector and its
    # private key (PEM); None until one is made for the domain.
    dkim_selector: Mapped[str | None] = mapped_column(String(63))
    dkim_private_key: Mapped[str | None] = mapped_column(Text)
    # What the monitor knows of the primary: the last check, and the failures or
    # successes in a row (the gateway's own delivery failures count too).
    last_check_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_check_ok: Mapped[bool | None] = mapped_column(Boolean)
    last_check_reply: Mapped[str] = mapped_column(String(300), default="", server_default="")
    failures_in_a_row: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    successes_in_a_row: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Moved on by the sync whenever the domain's people change, so that what is kept
    # of them elsewhere (the Control Panel's suggestion index) knows when to read again.
    people_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Days the standby store keeps the domain's mail; None: [standby] retention_days.
    retention_days: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    people: Mapped[list[Person]] = relationship(back_populates="domain")


class Person(Base):
    """Someone from a directory; never hard-deleted by the sync, only marked removed."""

    __tablename__ = "person"
    __table_args__ = (
        UniqueConstraint("source", "external_id"),
        Index(
            "uq_person_mail_live",
            "mail",
            unique=True,
            sqlite_where=text("removed_at IS NULL"),
            postgresql_where=text("removed_at IS NULL"),
        ),
        Index("ix_person_domain_mail", "domain_id", "mail"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"))
    source: Mapped[str] = mapped_column(String(64))
    external_id: Mapped[str] = mapped_column(String(255))
    dn: Mapped[str] = mapped_column(Text)
    mail: Mapped[str] = mapped_column(String(320))
    display_name: Mapped[str] = mapped_column(String(512), default="")
    alternate_contact: Mapped[str | None] = mapped_column(String(320))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    session_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)

    domain: Mapped[Domain] = relationship(back_populates="people")
    aliases: Mapped[list[Alias]] = relationship(
        back_populates="person", cascade="all, delete-orphan"
    )


class Alias(Base):
    """Another address that delivers to a person."""

    __tablename__ = "alias"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)

    person: Mapped[Person] = relationship(back_populates="aliases")


class CoverageEntry(Base):
    """A person individually added to Continuity Service ("Only selected users")."""

    __tablename__ = "coverage_entry"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"), index=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), unique=True)
    added_by: Mapped[str] = mapped_column(String(320))
    added_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class EmergencyCredential(Base):
    """A person's emergency password, as an argon2id hash."""

    __tablename__ = "emergency_credential"

    person_id: Mapped[int] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), primary_key=True
    )
    password_hash: Mapped[str] = mapped_column(String(255))
    set_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ResetCode(Base):
    """A single-use helpdesk code for setting a new emergency password, stored hashed."""

    __tablename__ = "reset_code"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("person.id", ondelete="CASCADE"), index=True)
    code_hash: Mapped[str] = mapped_column(String(255))
    issued_by: Mapped[str] = mapped_column(String(320))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LocalAccount(Base):
    """A staff account that lives only in the roster, to administer before any directory."""

    __tablename__ = "local_account"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    address: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    session_generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class StaffRole(Base):
    """A role (helpdesk, admin, global admin) held by a person or a local account.

    ``origin`` is ``directory:<source>`` for roles the sync maps from groups (the sync
    owns and rewrites those) or ``local`` for roles given on the command line.
    """

    __tablename__ = "staff_role"
    __table_args__ = (
        UniqueConstraint("person_id", "local_account_id", "role", "domain_id", "origin"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    person_id: Mapped[int | None] = mapped_column(
        ForeignKey("person.id", ondelete="CASCADE"), index=True
    )
    local_account_id: Mapped[int | None] = mapped_column(
        ForeignKey("local_account.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(32))
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    origin: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class DirectoryMark(Base):
    """A source's incremental high-water mark on one directory server."""

    __tablename__ = "directory_mark"
    __table_args__ = (UniqueConstraint("source", "server"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    server: Mapped[str] = mapped_column(String(255))
    mark: Mapped[str] = mapped_column(String(64))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class SyncRun(Base):
    """One run of the directory sync for one source, whatever its outcome."""

    __tablename__ = "sync_run"
    __table_args__ = (Index("ix_sync_run_source_started", "source", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    source: Mapped[str] = mapped_column(String(64))
    mode: Mapped[str] = mapped_column(String(16))
    server: Mapped[str | None] = mapped_column(String(255))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    entries_read: Mapped[int] = mapped_column(Integer, default=0)
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    error: Mapped[str | None] = mapped_column(Text)


class RunLock(Base):
    """A lease that keeps two runs of the same job from overlapping (SQLite and PostgreSQL)."""

    __tablename__ = "run_lock"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(255))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime)


class ContinuityEvent(Base):
    """An outage of a domain's primary server, from detection to hand-back."""

    __tablename__ = "continuity_event"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"), index=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    reason: Mapped[str] = mapped_column(Text, default="")  # the cause, in words
    started_by: Mapped[str] = mapped_column(
        String(320), default="monitor", server_default="monitor"
    )
    ended_by: Mapped[str | None] = mapped_column(String(320))
    # The hand-back: set when the primary answered again; cleared if it fails again.
    recovery_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    held: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    handed_back: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Which changes the domain's admins (and people) were told of, whoever made them:
    # the start, the recovery whose recovery_started_at is copied here (a recovery after
    # a reopen is told again), the end. The gateway sets each in the transaction that
    # queues the notices, so two gateways never tell one change twice.
    notified_started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_recovery_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    notified_ended_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class AuditEvent(Base):
    """Who did what, when, to whom, with the state before and after."""

    __tablename__ = "audit_event"
    __table_args__ = (
        Index("ix_audit_event_domain_at", "domain_id", "at"),
        Index("ix_audit_event_person_at", "person_id", "at"),
        # /metrics' sign-in counts: one action's rows by id (roster.metrics).
        Index("ix_audit_event_action_id", "action", "id"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    actor: Mapped[str] = mapped_column(String(320))
    action: Mapped[str] = mapped_column(String(64))
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    client: Mapped[str | None] = mapped_column(String(64))
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    detail: Mapped[str] = mapped_column(Text, default="")


class SignInThrottle(Base):
    """Failed sign-ins counted per account or per client address, and any lock."""

    __tablename__ = "sign_in_throttle"

    key: Mapped[str] = mapped_column(String(400), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class PortalSession(Base):
    """One signed-in portal session; the browser holds only its id (stored here hashed).

    Signing out deletes the row, so a copy of the cookie taken before is worth nothing.
    """

    __tablename__ = "portal_session"
    __table_args__ = (Index("ix_portal_session_principal", "kind", "principal_id"),)

    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    principal_id: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


# ---------------------------------------------------------------------------
# The mail queue: one per deployment, bodies included, shared by every gateway
# ---------------------------------------------------------------------------
QUEUED = "queued"
DEFERRED = "deferred"
DELIVERED = "delivered"
BOUNCED = "bounced"
PENDING_STATES = (QUEUED, DEFERRED)

ROUTE_PRIMARY = "primary"  # to the recipient domain's primary server
ROUTE_RELAY = "relay"  # through [outbound] relay (notices the gateway writes)

COPY_PENDING = "pending"
COPY_DONE = "copied"
COPY_FAILED = "failed"
# Made, then removed by retention: the address passed to someone else, whose webmail
# must not show it (roster.standby.holds_others_mail).
COPY_REMOVED = "removed"


class MailMessage(Base):
    """A message the gateway accepted with 250: durable from that reply on."""

    __tablename__ = "mail_message"
    # Email Live Tracking pages by key (received_at, queue_id), newest first.
    __table_args__ = (
        Index("ix_mail_message_received_at_queue_id", "received_at", "queue_id"),
        Index("ix_mail_message_sender", "sender"),
    )

    # Time-ordered and unique across gateways: it is in the 250 reply and every log line.
    queue_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime)
    sender: Mapped[str] = mapped_column(String(320))  # "" for the null sender
    size: Mapped[int] = mapped_column(Integer)
    message_id: Mapped[str] = mapped_column(String(255), default="")
    client_address: Mapped[str] = mapped_column(String(64), default="")
    client_name: Mapped[str] = mapped_column(String(255), default="")
    helo: Mapped[str] = mapped_column(String(255), default="")
    protocol: Mapped[str] = mapped_column(String(16), default="ESMTP")
    origin: Mapped[str] = mapped_column(String(16), default="smtp")  # smtp | notice
    body: Mapped[bytes] = mapped_column(LargeBinary)


class MailRecipient(Base):
    """One recipient of a queued message and where its delivery stands."""

    __tablename__ = "mail_recipient"
    __table_args__ = (
        Index(
            "ix_mail_recipient_due",
            "next_attempt_at",
            sqlite_where=text("status IN ('queued', 'deferred')"),
            postgresql_where=text("status IN ('queued', 'deferred')"),
        ),
        Index("ix_mail_recipient_domain_status", "domain_id", "status"),
        # The mail-flow chart (roster.flow): a domain's days are a range of queue ids.
        Index(
            "ix_mail_recipient_domain_queue_id", "domain_id", "queue_id", "status", "via_continuity"
        ),
        # Email Live Tracking's filters: one recipient, mail via Continuity Service.
        Index("ix_mail_recipient_address", "address"),
        Index(
            "ix_mail_recipient_via_continuity",
            "domain_id",
            "queue_id",
            sqlite_where=text("via_continuity = 1"),
            postgresql_where=text("via_continuity = true"),
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    queue_id: Mapped[str] = mapped_column(
        ForeignKey("mail_message.queue_id", ondelete="CASCADE"), index=True
    )
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    address: Mapped[str] = mapped_column(String(320))
    route: Mapped[str] = mapped_column(String(8), default=ROUTE_PRIMARY)
    status: Mapped[str] = mapped_column(String(16), default=QUEUED)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_reply: Mapped[str] = mapped_column(String(1000), default="")
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    delay_notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    # Received or held during a continuity event of its domain: Email Live Tracking
    # shows it "Deferred" even after the hand-back, as the manual says.
    via_continuity: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


class StandbyCopy(Base):
    """The copy of a message for a covered person's standby mailbox."""

    __tablename__ = "standby_copy"
    __table_args__ = (
        Index(
            "ix_standby_copy_due",
            "next_attempt_at",
            sqlite_where=text("status = 'pending'"),
            postgresql_where=text("status = 'pending'"),
        ),
        # Whose mail a mailbox holds (roster.standby.holds_others_mail, migration 0014).
        Index("ix_standby_copy_mailbox_person", "mailbox", "status", "person_id"),
        UniqueConstraint("queue_id", "mailbox"),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    queue_id: Mapped[str] = mapped_column(
        ForeignKey("mail_message.queue_id", ondelete="CASCADE"), index=True
    )
    domain_id: Mapped[int] = mapped_column(ForeignKey("domain.id"))
    person_id: Mapped[int | None] = mapped_column(ForeignKey("person.id", ondelete="SET NULL"))
    mailbox: Mapped[str] = mapped_column(String(320))
    status: Mapped[str] = mapped_column(String(16), default=COPY_PENDING)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_reply: Mapped[str] = mapped_column(String(1000), default="")
    copied_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    claimed_until: Mapped[datetime | None] = mapped_column(UTCDateTime)


# ---------------------------------------------------------------------------
# Retention: the standby mailboxes it looks after, and its runs
# ---------------------------------------------------------------------------
class StandbyMailbox(Base):
    """An address that has (or may have) a mailbox in the standby store.

    ``uncovered_since``: when retention first saw it no longer covered (its mail is kept
    for the grace period); ``emptying_since``: the grace is over and the users file
    lists it again until retention has emptied it.
    """

    __tablename__ = "standby_mailbox"

    address: Mapped[str] = mapped_column(String(320), primary_key=True)
    domain_id: Mapped[int | None] = mapped_column(ForeignKey("domain.id"))
    uncovered_since: Mapped[datetime | None] = mapped_column(UTCDateTime)
    emptying_since: Mapped[datetime | None] = mapped_column(UTCDateTime)


class RetentionRun(Base):
    """One run of the retention, with what it removed (or would have, in a dry run)."""

    __tablename__ = "retention_run"
    __table_args__ = (Index("ix_retention_run_started_at", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    dry_run: Mapped[bool] = mapped_column(Boolean, default=False)
    outcome: Mapped[str] = mapped_column(String(16), default="running")
    started_by: Mapped[str] = mapped_column(String(255), default="")
    counts: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
