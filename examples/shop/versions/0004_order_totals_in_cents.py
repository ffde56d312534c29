"""Keep order totals in cents: a reversible data rewrite, the model unchanged.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE orders SET total = total * 100")


def downgrade() -> None:
    op.execute("UPDATE orders SET total = total / 100")
