"""Email Live Tracking's indexes: the list is read newest first and paged by key
(received_at, queue_id), so the messages' time index carries the queue id too and a
page deep in the past is one range read, like the first; a filter that singles out few
messages (one recipient, one sender, mail via Continuity Service) is read through an
index of its own

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-30 04:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_index(
        "ix_mail_message_received_at_queue_id", "mail_message", ["received_at", "queue_id"]
    )
    op.drop_index("ix_mail_message_received_at", table_name="mail_message")
    op.create_index("ix_mail_message_sender", "mail_message", ["sender"])
    op.create_index("ix_mail_recipient_address", "mail_recipient", ["address"])
    op.create_index(
        "ix_mail_recipient_via_continuity",
        "mail_recipient",
        ["domain_id", "queue_id"],
        sqlite_where=sa.text("via_continuity = 1"),
        postgresql_where=sa.text("via_continuity = true"),
    )


def downgrade() -> None:
    """Undo this revision."""
    op.drop_index("ix_mail_recipient_via_continuity", table_name="mail_recipient")
    op.drop_index("ix_mail_recipient_address", table_name="mail_recipient")
    op.drop_index("ix_mail_message_sender", table_name="mail_message")
    op.create_index("ix_mail_message_received_at", "mail_message", ["received_at"])
    op.drop_index("ix_mail_message_received_at_queue_id", table_name="mail_message")
