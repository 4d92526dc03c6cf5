"""which event changes were told to people

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = sa.DateTime(timezone=True)
COLUMNS = ("notified_started_at", "notified_recovery_at", "notified_ended_at")


def upgrade() -> None:
    """Apply this revision: the columns, and the events of before it count as told (a
    notice of an outage that is long over would only confuse)."""
    for name in COLUMNS:
        op.add_column("continuity_event", sa.Column(name, WHEN, nullable=True))
    op.execute(
        "UPDATE continuity_event SET notified_started_at = started_at,"
        " notified_recovery_at = recovery_started_at, notified_ended_at = ended_at"
    )


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("continuity_event") as batch:
        for name in reversed(COLUMNS):
            batch.drop_column(name)
