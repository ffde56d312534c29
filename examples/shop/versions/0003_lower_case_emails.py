"""Lower-case every email: a data rewrite, the model unchanged.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE accounts SET email = lower(email)")


def downgrade() -> None:
    """Irreversible: the case the emails were typed in is gone; they stay lower-case."""
