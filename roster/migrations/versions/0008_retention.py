"""retention: a domain's own retention age, the standby mailboxes retention looks after
(uncovered since, being emptied), and its runs

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-30 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

WHEN = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Apply this revision."""
    op.add_column("domain", sa.Column("retention_days", sa.Integer(), nullable=True))
    op.create_table(
        "standby_mailbox",
        sa.Column("address", sa.String(320), nullable=False),
        sa.Column("domain_id", sa.Integer(), nullable=True),
        sa.Column("uncovered_since", WHEN, nullable=True),
        sa.Column("emptying_since", WHEN, nullable=True),
        sa.ForeignKeyConstraint(
            ["domain_id"], ["domain.id"], name="fk_standby_mailbox_domain_id_domain"
        ),
        sa.PrimaryKeyConstraint("address", name="pk_standby_mailbox"),
    )
    op.create_table(
        "retention_run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("started_at", WHEN, nullable=False),
        sa.Column("finished_at", WHEN, nullable=True),
        sa.Column("dry_run", sa.Boolean(), nullable=False),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("started_by", sa.String(255), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_retention_run"),
    )
    op.create_index("ix_retention_run_started_at", "retention_run", ["started_at"])
    # Every mailbox a copy ever went to, so that people uncovered before the first run
    # are emptied after the grace too (the first run finds who is covered).
    op.execute(
        "INSERT INTO standby_mailbox (address, domain_id)"
        " SELECT mailbox, MIN(domain_id) FROM standby_copy GROUP BY mailbox"
    )


def downgrade() -> None:
    """Undo this revision."""
    op.drop_index("ix_retention_run_started_at", table_name="retention_run")
    op.drop_table("retention_run")
    op.drop_table("standby_mailbox")
    with op.batch_alter_table("domain") as batch:
        batch.drop_column("retention_days")
