"""Trim the whitespace users typed around their names: a data migration that no model
change shows, so the cached accounts it rewrites are invalidated after it commits.

Revision ID: 0002
Revises: 0001
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("UPDATE fastapi_accounts SET name = btrim(name) WHERE name <> btrim(name)")


def downgrade() -> None:
    pass  # the whitespace is gone for good
