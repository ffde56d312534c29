"""Create profiles.

Revision ID: r0
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r0"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("email", sa.String(50), nullable=False, unique=True),
        sa.Column("points", sa.Integer, nullable=False),
        sa.Column("note", sa.String(20), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("profiles")
