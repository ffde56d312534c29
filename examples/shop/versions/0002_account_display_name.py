"""Add accounts.display_name: a column change, matched by the model.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "accounts",
        sa.Column("display_name", sa.String(100), nullable=False, server_default=""),
    )


def downgrade() -> None:
    # Batch mode: SQLite rebuilds the table, other databases run ALTER TABLE.
    with op.batch_alter_table("accounts") as batch:
        batch.drop_column("display_name")
