"""failover: the monitor's view of each primary, failover settings, continuity events
with their recovery and counts, recipients received or held during an event

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-30 04:15:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.add_column(
        "domain", sa.Column("recover_after", sa.Integer(), server_default="3", nullable=False)
    )
    op.add_column(
        "domain", sa.Column("failover_codes", sa.String(64), server_default="", nullable=False)
    )
    op.add_column(
        "domain", sa.Column("language", sa.String(8), server_default="en", nullable=False)
    )
    op.add_column("domain", sa.Column("last_check_at", WHEN, nullable=True))
    op.add_column("domain", sa.Column("last_check_ok", sa.Boolean(), nullable=True))
    op.add_column(
        "domain", sa.Column("last_check_reply", sa.String(300), server_default="", nullable=False)
    )
    op.add_column(
        "domain", sa.Column("failures_in_a_row", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "domain", sa.Column("successes_in_a_row", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "continuity_event",
        sa.Column("started_by", sa.String(320), server_default="monitor", nullable=False),
    )
    op.add_column("continuity_event", sa.Column("ended_by", sa.String(320), nullable=True))
    op.add_column("continuity_event", sa.Column("recovery_started_at", WHEN, nullable=True))
    op.add_column(
        "continuity_event", sa.Column("held", sa.Integer(), server_default="0", nullable=False)
    )
    op.add_column(
        "continuity_event",
        sa.Column("handed_back", sa.Integer(), server_default="0", nullable=False),
    )
    op.add_column(
        "mail_recipient",
        sa.Column("via_continuity", sa.Boolean(), server_default=sa.false(), nullable=False),
    )


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("mail_recipient") as batch:
        batch.drop_column("via_continuity")
    with op.batch_alter_table("continuity_event") as batch:
        for name in ("handed_back", "held", "recovery_started_at", "ended_by", "started_by"):
            batch.drop_column(name)
    with op.batch_alter_table("domain") as batch:
        for name in (
            "successes_in_a_row",
            "failures_in_a_row",
            "last_check_reply",
            "last_check_ok",
            "last_check_at",
            "language",
            "failover_codes",
            "recover_after",
        ):
            batch.drop_column(name)
