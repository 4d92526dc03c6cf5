"""the sign-in counts of /metrics read the audit trail by action: an index on
(action, id), so that a portal worker's first count reads the sign-in rows alone instead
of the whole audit_event table, and later ones a short range of each action
(roster.metrics.AppendOnlyTally)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision. On PostgreSQL the index is built CONCURRENTLY, outside a
    transaction (as 0012's): a plain build locks audit_event against writes, and so
    every sign-in and every change that is audited, for as long as a large trail takes."""
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_audit_event_action_id",
            "audit_event",
            ["action", "id"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Undo this revision."""
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_audit_event_action_id", table_name="audit_event", postgresql_concurrently=True
        )
