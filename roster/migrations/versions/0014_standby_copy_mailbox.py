"""whose mail a standby mailbox holds: an index on standby_copy (mailbox, status,
person_id), so
that the webmail can tell, for each request, that the mailbox of a person's address
holds no copy made for someone else (an address that passed from one person to another
within the archive's months), and retention can find such mailboxes in one pass

Revision ID: 0014
Revises: 0013
Create Date: 2026-11-30 19:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision. On PostgreSQL the index is built CONCURRENTLY, outside a
    transaction (as 0012's and 0013's): a plain build would lock standby_copy against
    the gateway's writes for as long as a large table takes."""
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_standby_copy_mailbox_person",
            "standby_copy",
            ["mailbox", "status", "person_id"],
            postgresql_concurrently=True,
        )


def downgrade() -> None:
    """Undo this revision."""
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_standby_copy_mailbox_person",
            table_name="standby_copy",
            postgresql_concurrently=True,
        )
