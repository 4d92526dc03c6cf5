"""domain people version (the Control Panel's suggestion index)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 22:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    with op.batch_alter_table("domain") as batch:
        batch.add_column(
            sa.Column("people_version", sa.Integer(), server_default="0", nullable=False)
        )


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("domain") as batch:
        batch.drop_column("people_version")
