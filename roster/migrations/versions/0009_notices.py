"""which event changes were told to people

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-30 04:20:00
"""

from collections.abc import Sequence

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision (its content comes with the work it serves)."""


def downgrade() -> None:
    """Undo this revision."""
