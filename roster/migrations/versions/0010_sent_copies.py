"""sent copies: a domain's switch to hand webmail-sent mail to the primary for Sent

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-30 04:40:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # A plain ADD COLUMN: batch mode would copy and drop the domain table, which SQLite
    # refuses once other tables' rows refer to it.
    op.add_column(
        "domain",
        sa.Column(
            "sent_copies_to_primary", sa.Boolean(), server_default=sa.false(), nullable=False
        ),
    )


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("domain") as batch:
        batch.drop_column("sent_copies_to_primary")
