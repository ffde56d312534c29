"""Longer emails again: a type change, no data change.

Revision ID: r4
Revises: r3
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r4"
down_revision = "r3"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("profiles", "email", type_=sa.String(120), existing_nullable=False)


def downgrade() -> None:
    op.alter_column("profiles", "email", type_=sa.String(80), existing_nullable=False)
