"""Longer notes, kept in upper case: a type change and a data rewrite.

Revision ID: r3
Revises: r2
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r3"
down_revision = "r2"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("profiles", "note", type_=sa.String(40), existing_nullable=False)
    op.execute("UPDATE profiles SET note = upper(note)")


def downgrade() -> None:
    op.execute("UPDATE profiles SET note = lower(note)")
    op.alter_column("profiles", "note", type_=sa.String(20), existing_nullable=False)
