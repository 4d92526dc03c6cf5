"""mail queue: messages with their bodies, recipients, standby copies; primary TLS
verification and recipient verification per domain

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Apply this revision."""
    op.add_column(
        "domain",
        sa.Column("primary_tls_verify", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.add_column(
        "domain",
        sa.Column("verify_recipients", sa.Boolean(), server_default=sa.true(), nullable=False),
    )
    op.create_table(
        "mail_message",
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("sender", sa.String(320), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("message_id", sa.String(255), nullable=False),
        sa.Column("client_address", sa.String(64), nullable=False),
        sa.Column("client_name", sa.String(255), nullable=False),
        sa.Column("helo", sa.String(255), nullable=False),
        sa.Column("protocol", sa.String(16), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("queue_id", name=op.f("pk_mail_message")),
    )
    op.create_index("ix_mail_message_received_at", "mail_message", ["received_at"])
    op.create_table(
        "mail_recipient",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("route", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_reply", sa.String(1000), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delay_notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mail_message.queue_id"],
            name=op.f("fk_mail_recipient_queue_id_mail_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domain.id"], name=op.f("fk_mail_recipient_domain_id_domain")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_mail_recipient")),
    )
    op.create_index("ix_mail_recipient_queue_id", "mail_recipient", ["queue_id"])
    op.create_index("ix_mail_recipient_domain_status", "mail_recipient", ["domain_id", "status"])
    op.create_index(
        "ix_mail_recipient_due",
        "mail_recipient",
        ["next_attempt_at"],
        sqlite_where=sa.text("status IN ('queued', 'deferred')"),
        postgresql_where=sa.text("status IN ('queued', 'deferred')"),
    )
    op.create_table(
        "standby_copy",
        sa.Column("id", BIG_ID, nullable=False),
        sa.Column("queue_id", sa.String(32), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=False),
        sa.Column("person_id", sa.Integer(), nullable=True),
        sa.Column("mailbox", sa.String(320), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_reply", sa.String(1000), nullable=False),
        sa.Column("copied_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("claimed_by", sa.String(64), nullable=True),
        sa.Column("claimed_until", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["mail_message.queue_id"],
            name=op.f("fk_standby_copy_queue_id_mail_message"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domain.id"], name=op.f("fk_standby_copy_domain_id_domain")
        ),
        sa.ForeignKeyConstraint(
            ["person_id"],
            ["person.id"],
            name=op.f("fk_standby_copy_person_id_person"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_standby_copy")),
        sa.UniqueConstraint("queue_id", "mailbox", name=op.f("uq_standby_copy_queue_id")),
    )
    op.create_index("ix_standby_copy_queue_id", "standby_copy", ["queue_id"])
    op.create_index(
        "ix_standby_copy_due",
        "standby_copy",
        ["next_attempt_at"],
        sqlite_where=sa.text("status = 'pending'"),
        postgresql_where=sa.text("status = 'pending'"),
    )


def downgrade() -> None:
    """Undo this revision."""
    op.drop_table("standby_copy")
    op.drop_table("mail_recipient")
    op.drop_table("mail_message")
    with op.batch_alter_table("domain") as batch:
        batch.drop_column("verify_recipients")
        batch.drop_column("primary_tls_verify")
