"""Longer emails: a type change, no data change.

Revision ID: r1
Revises: r0
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "r1"
down_revision = "r0"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.alter_column("profiles", "email", type_=sa.String(80), existing_nullable=False)


def downgrade() -> None:
    op.alter_column("profiles", "email", type_=sa.String(50), existing_nullable=False)
