"""Points in tenths, as a BIGINT: a type change and a data rewrite.

Revision ID: r2
Revises: r1
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r2"
down_revision = "r1"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("profiles", "points", type_=sa.BigInteger, existing_nullable=False)
    op.execute("UPDATE profiles SET points = points * 10")


def downgrade() -> None:
    op.execute("UPDATE profiles SET points = points / 10")
    op.alter_column("profiles", "points", type_=sa.Integer, existing_nullable=False)
