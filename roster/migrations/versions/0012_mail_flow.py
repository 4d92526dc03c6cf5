"""the Control Panel's mail-flow chart: a domain's recipients by arrival, read from one
index on (domain_id, queue_id, status, via_continuity); queue ids sort by the moment of
the 250, so a domain's days are one range of it, and status and via_continuity are in
it, so the chart reads no table row (roster.flow)

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-30 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0012"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision. On PostgreSQL the index is built CONCURRENTLY, outside a
    transaction: a plain build locks mail_recipient against the gateways' writes for as
    long as it takes on a large queue (their commits, and so their 250s, would wait)."""
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_mail_recipient_domain_queue_id",
            "mail_recipient",
            ["domain_id", "queue_id", "status", "via_continuity"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Undo this revision."""
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_mail_recipient_domain_queue_id",
            table_name="mail_recipient",
            postgresql_concurrently=True,
        )
