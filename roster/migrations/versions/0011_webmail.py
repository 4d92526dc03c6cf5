"""webmail: when a domain's people may open the standby webmail, and its DKIM key

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-30 07:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    # Plain ADD COLUMNs: batch mode would copy and drop the domain table, which SQLite
    # refuses once other tables' rows refer to it.
    op.add_column(
        "domain",
        sa.Column("webmail_access", sa.String(16), server_default="always", nullable=False),
    )
    op.add_column("domain", sa.Column("dkim_selector", sa.String(63), nullable=True))
    op.add_column("domain", sa.Column("dkim_private_key", sa.Text(), nullable=True))


def downgrade() -> None:
    """Undo this revision."""
    with op.batch_alter_table("domain") as batch:
        batch.drop_column("dkim_private_key")
        batch.drop_column("dkim_selector")
        batch.drop_column("webmail_access")
